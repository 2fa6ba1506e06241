/**
 * The driver contract on the Firecracker driver: with a real `firecracker` where one is on PATH
 * and KVM can run the guest kernel, else with the Firecracker shim of @sandcell/test-utils
 * (Firecracker's API, flags and errors in front of a QEMU guest), plus what only a VM shows.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { standardPath } from '@sandcell/shared'
import {
  createFirecrackerDriver,
  createQemuDriver,
  type FirecrackerDriver,
  type Sandbox,
} from '@sandcell/runtime'
import { run, runDriverContract, sh, waitFor, withDeadline } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createFirecrackerShim,
  createTestLogger,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'

/** Kernel, images and template snapshots are built once per machine and kept across runs. */
const testImagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'
const template = process.env.SANDCELL_TEST_VM_TEMPLATE ?? 'debian'
const cgroupParent = `sandcell-test-fc-${process.pid}`
const dataDirs: string[] = []

function onPath(command: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${command}`], {
      encoding: 'utf8',
      env: { PATH: standardPath },
    }).trim()
  } catch {
    return undefined
  }
}

/**
 * The accelerator the qemu driver settled on for this host: KVM only when it boots the guest
 * kernel (this host's nested /dev/kvm does not), which is what Firecracker would need too.
 */
const probeDir = mkdtempSync(join(tmpdir(), 'sandcell-test-fc-probe-'))
const accel = await createQemuDriver({
  dataDir: probeDir,
  log: createTestLogger(),
  templatesDir: testTemplatesDir,
  imagesDir: testImagesDir,
}).accelerator()
rmSync(probeDir, { recursive: true, force: true })
const realFirecracker = accel === 'kvm' ? onPath('firecracker') : undefined
const shimDir = mkdtempSync(join(tmpdir(), 'sandcell-test-fc-shim-'))
dataDirs.push(shimDir)
const firecracker =
  realFirecracker === undefined
    ? createFirecrackerShim({ dir: shimDir, accel, vmmMemoryInParentCgroup: true })
    : { binary: realFirecracker, version: 'real' }
const variant =
  realFirecracker === undefined
    ? `Firecracker shim on QEMU/${accel}: ${onPath('firecracker') === undefined ? 'no firecracker on PATH' : 'KVM cannot run the guest kernel here'}`
    : `real Firecracker at ${realFirecracker}`

function createTestFirecrackerDriver(): {
  driver: FirecrackerDriver
  reopen: () => FirecrackerDriver
  dispose: () => Promise<void>
} {
  const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-test-fc-'))
  dataDirs.push(dataDir)
  const log = createTestLogger()
  const open = (): FirecrackerDriver =>
    createFirecrackerDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      imagesDir: testImagesDir,
      cgroupParent,
      firecrackerBinary: firecracker.binary,
      // Under TCG a guest boots and restores an order of magnitude slower than under KVM.
      ...(accel === 'tcg' ? { readyTimeoutMs: 60_000 } : {}),
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
  rmSync(shimDir, { recursive: true, force: true })
  await assertNoLeaks(baseline, { timeoutMs: 10_000, scope: [cgroupParent, ...dataDirs] })
})

runDriverContract({
  name: `firecracker (${variant})`,
  template,
  limits: testLimits,
  createDriver: createTestFirecrackerDriver,
})

describe(`firecracker microVMs (${variant})`, () => {
  let made: ReturnType<typeof createTestFirecrackerDriver>
  const live = new Set<Sandbox>()
  let snapshotRoot = ''
  before(async () => {
    made = createTestFirecrackerDriver()
    snapshotRoot = mkdtempSync(join(tmpdir(), 'sandcell-snapshots-'))
    await made.driver.prepareTemplate(template)
  })
  after(async () => {
    await Promise.allSettled([...live].map((s) => s.destroy()))
    await made.dispose()
    rmSync(snapshotRoot, { recursive: true, force: true })
  })

  it("reports the VMM's version and runs the guest's own kernel", async () => {
    const probe = await made.driver.probe()
    assert.match(probe.details?.firecracker ?? '', /^Firecracker v\d+\.\d+\.\d+/)
    if (realFirecracker === undefined) {
      assert.equal(probe.details?.firecracker, firecracker.version)
    }
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
    // A shell counting in a variable: only the process's memory holds the count.
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
    const snapshot = await sandbox.snapshot({ dir: join(snapshotRoot, 'running') })
    await sandbox.destroy({ reason: 'killed on purpose' })
    await counting
    const restored = await made.driver.create({
      template,
      limits: testLimits,
      fromSnapshot: snapshot,
    })
    live.add(restored)
    const shells = await sh(restored, 'ps -eo args | grep -c "[w]hile :"')
    assert.equal(shells.stdout, '1\n', 'the counting shell is still there')
    const first = Number((await sh(restored, 'cat /tmp/count')).stdout)
    await waitFor(
      async () => Number((await sh(restored, 'cat /tmp/count')).stdout) > first + 3,
      60_000,
    )
    assert.ok(first > 3, `counted on from where the snapshot caught it: ${first}`)
  })
})
