/**
 * What every driver keeps on disk for a sandbox, whatever isolates it: the persisted state's
 * common fields (from which a later process adopts the sandbox or cleans up after it), a
 * sandbox's info made from them, the sandbox directories, and JSON files written atomically.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { z } from 'zod'
import { persistSlot, persistedSlotSchema } from '@sandcell/network'
import { parseSandboxId, type SandboxId } from '@sandcell/shared'
import type { DriverKind, SandboxInfo, SandboxSpec } from '../driver.js'
import type { CgroupVersion } from '../os/cgroups.js'
import { networkInfo, type SandboxNetworkHandle } from '../sandbox-network-handle.js'

/** The persisted state every driver writes; each adds the host processes it must find again. */
export const persistedSandboxBaseSchema = z.object({
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
  cgroupVersion: z.union([z.literal(1), z.literal(2)]),
  cgroupParent: z.string(),
  /** The network slot the sandbox runs in; absent for one with no way out. */
  network: persistedSlotSchema.optional(),
})

export type PersistedSandboxBase = z.infer<typeof persistedSandboxBaseSchema>

/** A new sandbox's info and the common part of its persisted state. */
export function newSandboxRecord(options: {
  id: SandboxId
  driver: DriverKind
  spec: SandboxSpec
  agentSocket: string
  cgroupVersion: CgroupVersion
  cgroupParent: string
  network?: SandboxNetworkHandle | undefined
}): { info: SandboxInfo; state: PersistedSandboxBase } {
  const { id, spec, network } = options
  const info: SandboxInfo = {
    id,
    driver: options.driver,
    template: spec.template,
    limits: { ...spec.limits },
    labels: { ...spec.labels },
    createdAt: new Date(),
    agentSocket: options.agentSocket,
    ...(network === undefined ? {} : { network: networkInfo(network) }),
  }
  const state: PersistedSandboxBase = {
    version: 1,
    id,
    template: spec.template,
    limits: info.limits,
    labels: info.labels,
    createdAt: info.createdAt.toISOString(),
    paused: false,
    cgroupVersion: options.cgroupVersion,
    cgroupParent: options.cgroupParent,
    ...(network === undefined ? {} : { network: persistSlot(network.slot) }),
  }
  return { info, state }
}

/** The info of a sandbox adopted from its persisted state. */
export function adoptedSandboxInfo(
  id: SandboxId,
  driver: DriverKind,
  state: PersistedSandboxBase,
  agentSocket: string,
  network?: SandboxNetworkHandle,
): SandboxInfo {
  return {
    id,
    driver,
    template: state.template,
    limits: state.limits,
    labels: state.labels,
    createdAt: new Date(state.createdAt),
    agentSocket,
    ...(network === undefined ? {} : { network: networkInfo(network) }),
  }
}

/** The ids of the sandbox directories under `sandboxesDir` (created when missing). */
export function listSandboxDirs(sandboxesDir: string): SandboxId[] {
  mkdirSync(sandboxesDir, { recursive: true })
  return readdirSync(sandboxesDir)
    .map((name) => parseSandboxId(name))
    .filter((id): id is SandboxId => id !== undefined)
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
