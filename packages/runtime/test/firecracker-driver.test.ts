/**
 * The driver contract on the Firecracker driver: with a real `firecracker` where one is on PATH
 * and KVM can run the guest kernel, else with the Firecracker shim of @sandcell/test-utils
 * (Firecracker's API, flags and errors in front of a QEMU guest), plus what only a VM shows.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, it } from 'node:test'
import { standardPath } from '@sandcell/shared'
import {
  createFirecrackerDriver,
  createQemuDriver,
  type FirecrackerDriver,
} from '@sandcell/runtime'
import { runDriverContract } from '@sandcell/test-utils/contract'
import { runMicroVmContract } from '@sandcell/test-utils/microvm-contract'
import {
  assertNoLeaks,
  createFirecrackerShim,
  createTestDriver,
  createTestLogger,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

/** Kernel, images and template snapshots are built once per machine and kept across runs. */
const testImagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'
const template = process.env.SANDCELL_TEST_VM_TEMPLATE ?? 'debian'
const cgroupParent = `sandcell-test-fc-${process.pid}`
/** Built templates, shared by every driver of this file (their images and snapshots go here). */
const buildsDir = mkdtempSync(join(tmpdir(), 'sandcell-test-fc-builds-'))
const dataDirs: string[] = [buildsDir]

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

function createTestFirecrackerDriver(): TestDriver<FirecrackerDriver> {
  const made = createTestDriver('sandcell-test-fc-', ({ dataDir, log }) =>
    createFirecrackerDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      imagesDir: testImagesDir,
      buildsDir,
      cgroupParent,
      firecrackerBinary: firecracker.binary,
      // Under TCG a guest boots and restores an order of magnitude slower than under KVM.
      ...(accel === 'tcg' ? { readyTimeoutMs: 60_000 } : {}),
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
  rmSync(shimDir, { recursive: true, force: true })
  rmSync(buildsDir, { recursive: true, force: true })
  await assertNoLeaks(baseline, { timeoutMs: 10_000, scope: [cgroupParent, ...dataDirs] })
})

runDriverContract({
  name: `firecracker (${variant})`,
  template,
  limits: testLimits,
  createDriver: createTestFirecrackerDriver,
})

runMicroVmContract({
  name: `firecracker (${variant})`,
  template,
  limits: testLimits,
  buildsDir,
  createDriver: createTestFirecrackerDriver,
  extra({ driver }) {
    it("reports the VMM's version", async () => {
      const probe = await driver().probe()
      assert.match(probe.details?.firecracker ?? '', /^Firecracker v\d+\.\d+\.\d+/)
      if (realFirecracker === undefined) {
        assert.equal(probe.details?.firecracker, firecracker.version)
      }
    })
  },
})
