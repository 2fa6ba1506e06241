/**
 * On-disk layout of one container sandbox and its persisted state, which is what lets a later
 * process re-adopt a running sandbox or clean up after a dead one.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { z } from 'zod'
import { persistedSlotSchema } from '@sandcell/network'
import type { SandboxId } from '@sandcell/shared'
import { parseSandboxId } from '@sandcell/shared'

export interface SandboxPaths {
  dir: string
  /** Sparse ext4 image holding the overlay's upper and work directories. */
  diskImage: string
  /** Where the disk image is mounted. */
  diskMount: string
  /** The overlay (template below, disk above): the sandbox's `/`. */
  rootfs: string
  /** Bind-mounted into the sandbox at /.sandcell/run; holds the agent's socket. */
  runDir: string
  agentSocket: string
  /** bwrap's and the agent's stdout/stderr. */
  log: string
  state: string
  /** Bound over the sandbox's /etc/resolv.conf when it has a network. */
  resolvConf: string
}

export function sandboxPaths(sandboxesDir: string, id: SandboxId): SandboxPaths {
  const dir = join(sandboxesDir, id)
  return {
    dir,
    diskImage: join(dir, 'disk.img'),
    diskMount: join(dir, 'disk'),
    rootfs: join(dir, 'rootfs'),
    runDir: join(dir, 'run'),
    agentSocket: join(dir, 'run', 'agent.sock'),
    log: join(dir, 'agent.log'),
    state: join(dir, 'state.json'),
    resolvConf: join(dir, 'resolv.conf'),
  }
}

const limitsSchema = z.object({
  memoryMiB: z.number(),
  cpus: z.number(),
  pids: z.number(),
  diskMiB: z.number(),
})

const stateSchema = z.object({
  version: z.literal(1),
  id: z.string(),
  template: z.string(),
  limits: limitsSchema,
  labels: z.record(z.string(), z.string()),
  createdAt: z.string(),
  paused: z.boolean(),
  /** The outer bwrap process on the host, with its start time against pid reuse. */
  bwrapPid: z.number().int(),
  bwrapStartTime: z.number(),
  cgroupVersion: z.union([z.literal(1), z.literal(2)]),
  cgroupParent: z.string(),
  /** The network slot the sandbox runs in; absent for loopback-only sandboxes. */
  network: persistedSlotSchema.optional(),
})

export type PersistedState = z.infer<typeof stateSchema>

/** Writes the state atomically (rename), so a crash never leaves half a file. */
export function writeState(paths: SandboxPaths, state: PersistedState): void {
  const temp = `${paths.state}.tmp`
  writeFileSync(temp, JSON.stringify(state, null, 2))
  renameSync(temp, paths.state)
}

/** The state of a sandbox dir, or undefined when it is missing or unreadable. */
export function readState(paths: SandboxPaths): PersistedState | undefined {
  try {
    const parsed = stateSchema.safeParse(JSON.parse(readFileSync(paths.state, 'utf8')))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}

/** Ids of every sandbox directory present, valid or not. */
export function listSandboxDirs(sandboxesDir: string): SandboxId[] {
  mkdirSync(sandboxesDir, { recursive: true })
  return readdirSync(sandboxesDir)
    .map((name) => parseSandboxId(name))
    .filter((id): id is SandboxId => id !== undefined)
}
