/**
 * The driver contract on the QEMU microVM driver (TCG on this host, KVM where it can run the
 * guest), plus what only a VM shows: its own kernel, and a process that survives its VM being
 * saved, killed and restored.
 */
import { after, before } from 'node:test'
import { createQemuDriver, type QemuDriver } from '@sandcell/runtime'
import { runDriverContract } from '@sandcell/test-utils/contract'
import { runMicroVmContract } from '@sandcell/test-utils/microvm-contract'
import {
  assertNoLeaks,
  createTestDriver,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

/** Kernel, images and template snapshots are built once per machine and kept across runs. */
const testImagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'
const template = process.env.SANDCELL_TEST_VM_TEMPLATE ?? 'debian'
const cgroupParent = `sandcell-test-qemu-${process.pid}`
const dataDirs: string[] = []

function createTestQemuDriver(): TestDriver<QemuDriver> {
  const made = createTestDriver('sandcell-test-qemu-', ({ dataDir, log }) =>
    createQemuDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      imagesDir: testImagesDir,
      cgroupParent,
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
  createDriver: createTestQemuDriver,
})
