/**
 * The limits of a stage (the request's, or the language's where it gave none) and the limits of
 * the sandbox that runs it: the stage's memory and processes plus what the sandbox's agent needs.
 */
import type { SandboxLimits } from '@sandcell/runtime'
import type { ResolvedLanguage } from './language-catalog.js'
import type { StageName } from './stage-result.js'

/** Processes and threads of the agent itself, on top of the language's `processes`. */
const agentPids = 32
/** The smallest memory a container sandbox can have (its agent included). */
const minSandboxMemoryMiB = 64

export interface StageLimits {
  timeoutMs: number
  memoryMiB: number
}

/**
 * A stage's limits: the given ones (already checked against the language's), the language's
 * for the rest.
 */
export function stageLimits(
  language: ResolvedLanguage,
  stage: StageName,
  given: Partial<StageLimits> = {},
): StageLimits {
  const configured = language.config.limits[stage]
  return {
    timeoutMs: given.timeoutMs ?? configured.timeoutMs,
    memoryMiB: given.memoryMiB ?? configured.memoryMiB,
  }
}

/** What sizes every run sandbox whatever its stage. */
export interface RunSandboxSizing {
  cpus: number
  diskMiB: number
  /** Memory added to a stage's for the sandbox's agent, MiB. */
  memoryOverheadMiB: number
}

/** The limits of a sandbox running a stage of `memoryMiB` with the language's `processes`. */
export function runSandboxLimits(
  sizing: RunSandboxSizing,
  memoryMiB: number,
  processes: number,
): SandboxLimits {
  return {
    cpus: sizing.cpus,
    diskMiB: sizing.diskMiB,
    memoryMiB: Math.max(minSandboxMemoryMiB, memoryMiB + sizing.memoryOverheadMiB),
    pids: processes + agentPids,
  }
}
