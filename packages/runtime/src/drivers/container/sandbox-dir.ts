/**
 * On-disk layout of one container sandbox and its persisted state, which is what lets a later
 * process re-adopt a running sandbox or clean up after a dead one.
 */
import { join } from 'node:path'
import { z } from 'zod'
import type { SandboxId } from '@sandcell/shared'
import {
  persistedSandboxBaseSchema,
  readJsonFile,
  writeJsonFileAtomic,
} from '../persisted-sandbox.js'

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
  /** Bound over the sandbox's /proc/sys/kernel/random/boot_id: one per start of the sandbox. */
  bootId: string
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
    bootId: join(dir, 'boot_id'),
  }
}

const stateSchema = persistedSandboxBaseSchema.extend({
  /** The outer bwrap process on the host, with its start time against pid reuse. */
  bwrapPid: z.number().int(),
  bwrapStartTime: z.number(),
})

export type PersistedState = z.infer<typeof stateSchema>

/** Writes the state atomically (rename), so a crash never leaves half a file. */
export function writeState(paths: SandboxPaths, state: PersistedState): void {
  writeJsonFileAtomic(paths.state, state)
}

/** The state of a sandbox dir, or undefined when it is missing or unreadable. */
export function readState(paths: SandboxPaths): PersistedState | undefined {
  return readJsonFile(paths.state, stateSchema)
}
