/**
 * How one stage of a run ended, in the engine's own terms (each compatible API maps them to its
 * wire): the classification of a finished stage, and its failure in words.
 */
import { signalNumber } from '@sandcell/protocol'
import { assertNever } from '@sandcell/shared'
import type { OutputStream } from './stage-output.js'

export type StageName = 'compile' | 'run'

/**
 * Why a stage's process is gone. The engine kills a stage with SIGKILL when it reaches its
 * wall-clock limit or an output cap; those kinds imply that signal.
 */
export type StageEnd =
  /** It exited by itself; 0 is success. */
  | { kind: 'exited'; code: number }
  /** A signal ended it (its own doing, another process's or the client's). */
  | { kind: 'signaled'; signal: NodeJS.Signals }
  /** A signal ended it after the sandbox ran out of memory: the kernel's OOM killer. */
  | { kind: 'out-of-memory'; signal: NodeJS.Signals; memoryMiB: number }
  /** Killed at its wall-clock limit. */
  | { kind: 'timed-out'; timeoutMs: number }
  /** Killed when `stream` reached the cap of characters kept per stream. */
  | { kind: 'output-limit'; stream: OutputStream; maxChars: number }

export interface StageResult {
  stdout: string
  stderr: string
  /** stdout and stderr in arrival order. */
  output: string
  end: StageEnd
  wallTimeMs: number
  /** CPU time of the sandbox during the stage, ms (its agent's share included). */
  cpuTimeMs: number | null
  /** Peak memory the stage added, bytes, when the sandbox's peak moved during it. */
  memoryBytes: number | null
}

/** True for a stage that exited 0: the next stage may run. */
export function stageSucceeded(end: StageEnd): boolean {
  return end.kind === 'exited' && end.code === 0
}

/** The signal that ended the stage's process: the engine's SIGKILL at a limit; null on exit. */
export function stageSignal(end: StageEnd): NodeJS.Signals | null {
  switch (end.kind) {
    case 'exited':
      return null
    case 'signaled':
    case 'out-of-memory':
      return end.signal
    case 'timed-out':
    case 'output-limit':
      return 'SIGKILL'
    default:
      return assertNever(end, 'stage end')
  }
}

/**
 * Classifies a finished stage. A reached cap comes before a timeout and a signal, as the
 * engine's kill for it ends the process too; an exit without code or signal counts as 0.
 */
export function classifyStage(input: {
  code: number | null
  signal: NodeJS.Signals | null
  timedOut: boolean
  exceeded: OutputStream | undefined
  oomKilled: boolean
  timeoutMs: number
  memoryMiB: number
  outputMaxChars: number
}): StageEnd {
  if (input.exceeded !== undefined) {
    return { kind: 'output-limit', stream: input.exceeded, maxChars: input.outputMaxChars }
  }
  if (input.timedOut) {
    return { kind: 'timed-out', timeoutMs: input.timeoutMs }
  }
  if (input.signal !== null) {
    return input.oomKilled
      ? { kind: 'out-of-memory', signal: input.signal, memoryMiB: input.memoryMiB }
      : { kind: 'signaled', signal: input.signal }
  }
  return { kind: 'exited', code: input.code ?? 0 }
}

/**
 * Why a stage failed, in words (the texts Piston clients know); null when it exited 0.
 */
export function describeStageEnd(end: StageEnd): string | null {
  switch (end.kind) {
    case 'exited':
      return end.code === 0 ? null : `Exited with error status ${end.code}`
    case 'signaled':
      return `Caught fatal signal ${signalNumber(end.signal)}`
    case 'out-of-memory':
      return `Out of memory (limit ${end.memoryMiB} MiB)`
    case 'timed-out':
      return `Time limit exceeded (${end.timeoutMs} ms wall clock)`
    case 'output-limit':
      return `${end.stream} length exceeded (limit ${end.maxChars} characters)`
    default:
      return assertNever(end, 'stage end')
  }
}
