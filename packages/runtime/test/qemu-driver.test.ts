/**
 * The driver contract on the QEMU microVM driver (TCG on this host, KVM where it can run the
 * guest), plus what only a VM shows: its own kernel, and a process that survives its VM being
 * saved, killed and restored.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createQemuDriver, type QemuDriver, type Sandbox } from '@sandcell/runtime'
import { run, runDriverContract, sh, waitFor, withDeadline } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createTestLogger,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'

/** Kernel, images and template snapshots are built once per machine and kept across runs. */
const testImagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'
const template = process.env.SANDCELL_TEST_VM_TEMPLATE ?? 'debian'
const cgroupParent = `sandcell-test-qemu-${process.pid}`
const dataDirs: string[] = []

function createTestQemuDriver(): {
  driver: QemuDriver
  reopen: () => QemuDriver
  dispose: () => Promise<void>
} {
  const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-test-qemu-'))
  dataDirs.push(dataDir)
  const log = createTestLogger()
  const open = (): QemuDriver =>
    createQemuDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      imagesDir: testImagesDir,
      cgroupParent,
    })
  const driver = open()
  return {
    driver,
    reopen: open,
    async dispose() {
      const left = await driver.adopt()
      await Promise.allSettled(left.map((s) => s.destroy({ reason: 'test teardown' })))
      await driver.close()
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

let baseline: LeakSnapshot
before(() => {
  baseline = snapshotLeaks()
})
after(async () => {
  await assertNoLeaks(baseline, { timeoutMs: 10_000, scope: [cgroupParent, ...dataDirs] })
})

runDriverContract({
  name: 'qemu (tcg)',
  template,
  limits: testLimits,
  createDriver: createTestQemuDriver,
})

describe('qemu microVMs', () => {
  let made: ReturnType<typeof createTestQemuDriver>
  const live = new Set<Sandbox>()
  let snapshotRoot = ''
  before(async () => {
    made = createTestQemuDriver()
    snapshotRoot = mkdtempSync(join(tmpdir(), 'sandcell-snapshots-'))
    await made.driver.prepareTemplate(template)
  })
  after(async () => {
    await Promise.allSettled([...live].map((s) => s.destroy()))
    await made.dispose()
    rmSync(snapshotRoot, { recursive: true, force: true })
  })

  it("runs the guest's own kernel, not the host's", async () => {
    const sandbox = await made.driver.create({ template, limits: testLimits })
    live.add(sandbox)
    const uname = await sh(sandbox, 'uname -r')
    assert.match(uname.stdout, /^\d+\.\d+\.\d+-\d+-cloud-amd64\n$/)
    assert.notEqual(uname.stdout.trim(), release(), 'the host kernel would mean no VM')
  })

  it('destroys a guest whose kernel panics and says so', async () => {
    const sandbox = await made.driver.create({ template, limits: testLimits })
    live.add(sandbox)
    // The stream breaks with the VM: expected.
    await sh(sandbox, 'echo c > /proc/sysrq-trigger', { user: 'root' }).catch(() => undefined)
    const reason = await withDeadline(sandbox.ended, 60_000, 'the end of the panicked VM')
    assert.match(reason.reason, /guest kernel panicked/)
    await waitFor(() => Promise.resolve(sandbox.state === 'destroyed'))
  })

  it('keeps a running process and its memory across save, kill and restore', async () => {
    const sandbox = await made.driver.create({ template, limits: testLimits })
    live.add(sandbox)
    // A shell counting in a variable: only the process's memory holds the count. The count is
    // renamed into place, so a reader never sees the file empty between truncate and write.
    const counting = run(sandbox, {
      cmd: '/bin/sh',
      args: [
        '-c',
        'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done',
      ],
      timeoutMs: 600_000,
    }).catch(() => undefined) // its stream breaks when the VM is killed: expected
    await waitFor(
      async () => Number((await sh(sandbox, 'cat /tmp/count 2>/dev/null || echo 0')).stdout) > 3,
      60_000,
    )
    const dir = join(snapshotRoot, 'running')
    const snapshot = await sandbox.snapshot({ dir })
    assert.equal(snapshot.memory, true)
    await sandbox.destroy({ reason: 'killed on purpose' })
    await counting
    const restored = await made.driver.create({
      template,
      limits: testLimits,
      fromSnapshot: snapshot,
    })
    live.add(restored)
    // `[w]hile` matches the counting shell but not this one's own command line.
    const shells = await sh(restored, 'ps -eo args | grep -c "[w]hile :"')
    assert.equal(shells.stdout, '1\n', 'the counting shell is still there')
    const first = Number((await sh(restored, 'cat /tmp/count')).stdout)
    await waitFor(
      async () => Number((await sh(restored, 'cat /tmp/count')).stdout) > first + 3,
      60_000,
    )
    const later = Number((await sh(restored, 'cat /tmp/count')).stdout)
    // It went on from where the snapshot caught it (past 3: memory intact), not from zero.
    assert.ok(first > 3 && later > first, `counted on: ${first} -> ${later}`)
  })
})
