/**
 * On-disk layout of one QEMU VM sandbox and its persisted state, which lets a later process adopt
 * a running VM or clean up after a dead one; and the manifest of a QEMU VM snapshot.
 */
import { join } from 'node:path'
import { z } from 'zod'
import {
  hostProcessSchema,
  persistedVmBaseSchema,
  snapshotDiskFile,
  snapshotManifestBaseSchema,
  snapshotManifests,
  type VmSandboxFiles,
} from '../microvm/persisted-vm.js'

export interface VmSandboxPaths extends VmSandboxFiles {
  qmpSocket: string
  /** The guest's control port (virtio-serial) as a Unix socket. */
  ctlSocket: string
}

export function vmSandboxPaths(sandboxesDir: string, id: string): VmSandboxPaths {
  const dir = join(sandboxesDir, id)
  return {
    dir,
    disk: join(dir, 'disk.ext4'),
    log: join(dir, 'vm.log'),
    qmpSocket: join(dir, 'qmp.sock'),
    ctlSocket: join(dir, 'ctl.sock'),
    agentSocket: join(dir, 'agent.sock'),
    state: join(dir, 'state.json'),
  }
}

export const vmShapeSchema = z.object({
  accel: z.enum(['kvm', 'tcg']),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  kernel: z.string(),
  initramfs: z.string(),
  rootfsImage: z.string(),
  sandcellImage: z.string(),
  tcgCacheMiB: z.number().int(),
})

/** A QEMU VM's persisted state: the shared part, QEMU's process and the VM's shape. */
export const persistedVmStateSchema = persistedVmBaseSchema.extend({
  qemu: hostProcessSchema,
  shape: vmShapeSchema,
})

export type PersistedVmState = z.infer<typeof persistedVmStateSchema>

/** Files of a VM snapshot directory. */
export const snapshotFiles = {
  /** QEMU's migration stream: devices and all of RAM. */
  state: 'vm-state.bin',
  disk: snapshotDiskFile,
} as const

const manifestSchema = snapshotManifestBaseSchema.extend({
  driver: z.literal('qemu'),
  shape: vmShapeSchema,
  /** The QEMU build that saved it: microvm states load only into the same build. */
  qemuIdentity: z.string(),
})

export type VmSnapshotManifest = z.infer<typeof manifestSchema>

/** This VMM's snapshot manifests. */
export const qemuManifests = snapshotManifests(manifestSchema)
