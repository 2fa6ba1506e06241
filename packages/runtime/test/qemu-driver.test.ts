/**
 * The driver contract on the QEMU microVM driver (TCG on this host, KVM where it can run the
 * guest), plus what only a VM shows: its own kernel, a process that survives its VM being
 * saved, killed and restored, and built templates (restored with their start command running,
 * or started at each create when the driver boots every VM).
 */
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, it } from 'node:test'
import { createQemuDriver, type QemuDriver, type QemuDriverOptions } from '@sandcell/runtime'
import { DriverError } from '@sandcell/shared'
import { runDriverContract } from '@sandcell/test-utils/contract'
import {
  assertStartedTemplate,
  runMicroVmContract,
  startedTemplate,
} from '@sandcell/test-utils/microvm-contract'
import {
  assertNoLeaks,
  createTestDriver,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  writeTestBuiltTemplate,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

/** Kernel, images and template snapshots are built once per machine and kept across runs. */
const testImagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'
const template = process.env.SANDCELL_TEST_VM_TEMPLATE ?? 'debian'
const cgroupParent = `sandcell-test-qemu-${process.pid}`
/** Built templates, shared by every driver of this file (their images and snapshots go here). */
const buildsDir = mkdtempSync(join(tmpdir(), 'sandcell-test-qemu-builds-'))
const dataDirs: string[] = [buildsDir]

function createTestQemuDriver(
  options: Pick<QemuDriverOptions, 'templateSnapshots'> = {},
): TestDriver<QemuDriver> {
  const made = createTestDriver('sandcell-test-qemu-', ({ dataDir, log }) =>
    createQemuDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      imagesDir: testImagesDir,
      buildsDir,
      cgroupParent,
      ...options,
    }),
  )
  dataDirs.push(made.dataDir)
  return made
}

let baseline: LeakSnapshot
before(() => {
  baseline = snapshotLeaks()
})
after(async () => {
  rmSync(buildsDir, { recursive: true, force: true })
  await assertNoLeaks(baseline, { timeoutMs: 10_000, scope: [cgroupParent, ...dataDirs] })
})

runDriverContract({
  name: 'qemu (tcg)',
  template,
  limits: testLimits,
  createDriver: createTestQemuDriver,
})

runMicroVmContract({
  name: 'qemu',
  template,
  limits: testLimits,
  buildsDir,
  createDriver: createTestQemuDriver,
  extra({ driver }) {
    it('fails a create whose template start command ends before ready, leaving nothing', async () => {
      const failing = await writeTestBuiltTemplate({
        buildsDir,
        files: {},
        defaults: { env: {}, user: 'root', startCmd: 'echo giving up; exit 7', readyCmd: 'false' },
      })
      const snapshots = join(buildsDir, 'vm', 'snapshots')
      const made = (): string[] =>
        existsSync(snapshots)
          ? readdirSync(snapshots).filter((name) => !name.endsWith('.lock'))
          : []
      const before = made()
      await assert.rejects(
        driver().create({ template: failing, limits: testLimits }),
        (err: unknown) => {
          assert.ok(err instanceof DriverError, String(err))
          assert.match(err.message, /start command exited with code 7 before it was ready/)
          assert.match(err.message, /giving up/)
          return true
        },
      )
      assert.deepEqual(made(), before, 'no snapshot of the failed template, whole or half made')
    })

    it('starts the start command at each create when every VM boots', async (t) => {
      const booting = createTestQemuDriver({ templateSnapshots: false })
      t.after(() => booting.dispose())
      const buildId = await writeTestBuiltTemplate({ buildsDir, ...startedTemplate })
      const sandbox = await booting.driver.create({ template: buildId, limits: testLimits })
      t.after(() => sandbox.destroy())
      await assertStartedTemplate(sandbox)
    })
  },
})
