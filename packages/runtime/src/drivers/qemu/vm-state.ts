/**
 * On-disk layout of one VM sandbox and its persisted state, which lets a later process adopt a
 * running VM or clean up after a dead one; and the manifest of a VM snapshot.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { z } from 'zod'
import { parseSandboxId, type SandboxId } from '@sandcell/shared'

export interface VmSandboxPaths {
  dir: string
  /** The writable disk (raw ext4), grown to the sandbox's disk size. */
  disk: string
  /** QEMU's output and the guest's serial console. */
  log: string
  qmpSocket: string
  ctlSocket: string
  agentSocket: string
  state: string
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

const limitsSchema = z.object({
  memoryMiB: z.number(),
  cpus: z.number(),
  pids: z.number(),
  diskMiB: z.number(),
})

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

const processSchema = z.object({ pid: z.number().int(), startTime: z.number() })

const stateSchema = z.object({
  version: z.literal(1),
  id: z.string(),
  template: z.string(),
  limits: limitsSchema,
  labels: z.record(z.string(), z.string()),
  createdAt: z.string(),
  paused: z.boolean(),
  qemu: processSchema,
  relay: processSchema,
  cgroupVersion: z.union([z.literal(1), z.literal(2)]),
  cgroupParent: z.string(),
  shape: vmShapeSchema,
})

export type PersistedVmState = z.infer<typeof stateSchema>

/** Writes the state atomically (rename), so a crash never leaves half a file. */
export function writeVmState(paths: VmSandboxPaths, state: PersistedVmState): void {
  const temp = `${paths.state}.tmp`
  writeFileSync(temp, JSON.stringify(state, null, 2))
  renameSync(temp, paths.state)
}

export function readVmState(paths: VmSandboxPaths): PersistedVmState | undefined {
  try {
    const parsed = stateSchema.safeParse(JSON.parse(readFileSync(paths.state, 'utf8')))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}

export function listVmSandboxDirs(sandboxesDir: string): SandboxId[] {
  mkdirSync(sandboxesDir, { recursive: true })
  return readdirSync(sandboxesDir)
    .map((name) => parseSandboxId(name))
    .filter((id): id is SandboxId => id !== undefined)
}

/** Files of a VM snapshot directory. */
export const snapshotFiles = {
  /** QEMU's migration stream: devices and all of RAM. */
  state: 'vm-state.bin',
  disk: 'disk.ext4',
  manifest: 'vm.json',
} as const

const manifestSchema = z.object({
  version: z.literal(1),
  driver: z.literal('qemu'),
  template: z.string(),
  diskMiB: z.number().int(),
  shape: vmShapeSchema,
  /** The QEMU build that saved it: microvm states load only into the same build. */
  qemuIdentity: z.string(),
  createdAt: z.string(),
})

export type VmSnapshotManifest = z.infer<typeof manifestSchema>

export function writeSnapshotManifest(dir: string, manifest: VmSnapshotManifest): void {
  writeFileSync(join(dir, snapshotFiles.manifest), JSON.stringify(manifest, null, 2))
}

export function readSnapshotManifest(dir: string): VmSnapshotManifest | undefined {
  try {
    const parsed = manifestSchema.safeParse(
      JSON.parse(readFileSync(join(dir, snapshotFiles.manifest), 'utf8')),
    )
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}
