/**
 * What both microVM drivers keep on disk for a VM sandbox: the state a later process adopts the
 * VM from or cleans up after, the sandbox directories, and the JSON files behind them.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { z } from 'zod'
import { persistSlot, persistedSlotSchema } from '@sandcell/network'
import { parseSandboxId, type SandboxId } from '@sandcell/shared'
import type { DriverKind, SandboxInfo, SandboxSpec } from '../../driver.js'
import type { CgroupVersion } from '../../os/cgroups.js'
import { networkInfo, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
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
export const persistedVmBaseSchema = z.object({
  version: z.literal(1),
  id: z.string(),
  template: z.string(),
  limits: z.object({
    memoryMiB: z.number(),
    cpus: z.number(),
    pids: z.number(),
    diskMiB: z.number(),
  }),
  labels: z.record(z.string(), z.string()),
  createdAt: z.string(),
  paused: z.boolean(),
  relay: hostProcessSchema,
  cgroupVersion: z.union([z.literal(1), z.literal(2)]),
  cgroupParent: z.string(),
  /** The network slot the VM runs in; absent for one with no way out. */
  network: persistedSlotSchema.optional(),
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

/** A new sandbox's info and the driver-independent part of its persisted state. */
export function newVmRecord(options: {
  id: SandboxId
  driver: DriverKind
  spec: SandboxSpec
  agentSocket: string
  relay: HostProcess
  cgroupVersion: CgroupVersion
  cgroupParent: string
  network?: SandboxNetworkHandle | undefined
}): { info: SandboxInfo; state: PersistedVmBase } {
  const { id, spec } = options
  const info: SandboxInfo = {
    id,
    driver: options.driver,
    template: spec.template,
    limits: { ...spec.limits },
    labels: { ...spec.labels },
    createdAt: new Date(),
    agentSocket: options.agentSocket,
    ...(options.network === undefined ? {} : { network: networkInfo(options.network) }),
  }
  const state: PersistedVmBase = {
    version: 1,
    id,
    template: spec.template,
    limits: info.limits,
    labels: info.labels,
    createdAt: info.createdAt.toISOString(),
    paused: false,
    relay: options.relay,
    cgroupVersion: options.cgroupVersion,
    cgroupParent: options.cgroupParent,
    ...(options.network === undefined ? {} : { network: persistSlot(options.network.slot) }),
  }
  return { info, state }
}

/** The info of a sandbox adopted from its persisted state. */
export function adoptedVmInfo(
  id: SandboxId,
  driver: DriverKind,
  state: PersistedVmBase,
  agentSocket: string,
  network?: SandboxNetworkHandle,
): SandboxInfo {
  return {
    ...(network === undefined ? {} : { network: networkInfo(network) }),
    id,
    driver,
    template: state.template,
    limits: state.limits,
    labels: state.labels,
    createdAt: new Date(state.createdAt),
    agentSocket,
  }
}

/** Writes `value` as indented JSON. */
export function writeJsonFile(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2))
}

/** Writes through a rename, so a crash never leaves half a file. */
export function writeJsonFileAtomic(path: string, value: unknown): void {
  const temp = `${path}.tmp`
  writeJsonFile(temp, value)
  renameSync(temp, path)
}

/** The file parsed by `schema`, or undefined when it is missing, not JSON or not valid. */
export function readJsonFile<T>(path: string, schema: z.ZodType<T>): T | undefined {
  try {
    const parsed = schema.safeParse(JSON.parse(readFileSync(path, 'utf8')))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}

/** The ids of the sandbox directories under `sandboxesDir` (created when missing). */
export function listVmSandboxDirs(sandboxesDir: string): SandboxId[] {
  mkdirSync(sandboxesDir, { recursive: true })
  return readdirSync(sandboxesDir)
    .map((name) => parseSandboxId(name))
    .filter((id): id is SandboxId => id !== undefined)
}
