/**
 * What both microVM drivers keep on disk for a VM sandbox beyond what every driver keeps: the
 * relay process in its state, the files of its directory, and snapshot manifests.
 */
import { join } from 'node:path'
import { z } from 'zod'
import type { SandboxInfo } from '../../driver.js'
import {
  newSandboxRecord,
  persistedSandboxBaseSchema,
  readJsonFile,
  writeJsonFile,
} from '../persisted-sandbox.js'
import type { HostProcess } from './vm-process.js'

/** Files of a VM sandbox's directory that do not depend on the VMM. */
export interface VmSandboxFiles {
  dir: string
  /** The writable disk (raw ext4), grown to the sandbox's disk size. */
  disk: string
  /** The VMM's output and the guest's serial console. */
  log: string
  agentSocket: string
  state: string
}

/** A host process as persisted: its pid and start time (so a reused pid is not mistaken for it). */
export const hostProcessSchema = z.object({ pid: z.number().int(), startTime: z.number() })

/** The persisted state without the VMM's process and the VM's shape, which each driver adds. */
export const persistedVmBaseSchema = persistedSandboxBaseSchema.extend({
  relay: hostProcessSchema,
})

export type PersistedVmBase = z.infer<typeof persistedVmBaseSchema>

/** The writable disk in a snapshot directory (a template's or a sandbox's), under every VMM. */
export const snapshotDiskFile = 'disk.ext4'

/** The fields every snapshot manifest has; each driver adds its own driver name, shape and VMM. */
export const snapshotManifestBaseSchema = z.object({
  version: z.literal(1),
  template: z.string(),
  diskMiB: z.number().int(),
  createdAt: z.string(),
})

/** Where a snapshot directory keeps its manifest, under every VMM. */
const snapshotManifestFile = 'vm.json'

/** Reading and writing one VMM's snapshot manifests (its schema extends the base one). */
export interface SnapshotManifests<T> {
  /** The manifest in `dir`, or undefined when it is missing or not this VMM's. */
  read(dir: string): T | undefined
  write(dir: string, manifest: T): void
}

export function snapshotManifests<T>(schema: z.ZodType<T>): SnapshotManifests<T> {
  return {
    read: (dir) => readJsonFile(join(dir, snapshotManifestFile), schema),
    write: (dir, manifest) => writeJsonFile(join(dir, snapshotManifestFile), manifest),
  }
}

/** A new VM sandbox's info and the driver-independent part of its persisted state. */
export function newVmRecord(
  options: Parameters<typeof newSandboxRecord>[0] & { relay: HostProcess },
): { info: SandboxInfo; state: PersistedVmBase } {
  const { info, state } = newSandboxRecord(options)
  return { info, state: { ...state, relay: options.relay } }
}
