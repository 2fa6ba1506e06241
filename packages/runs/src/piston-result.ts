/**
 * Piston's view of a run (engineer-man/piston API v2): a stage's end as Piston's two-letter
 * status with its code, signal and message, and a run in Piston's response shape. The Piston
 * routes answer with it; `sandcell run` prints it, the same for local and remote runs.
 */
import { assertNever } from '@sandcell/shared'
import type { RunResult } from './run-request.js'
import { describeStageEnd, stageSignal, type StageEnd, type StageResult } from './stage-result.js'

/** Piston's stage status: runtime error, signal, timeout, stdout or stderr length. */
export type PistonStatus = 'RE' | 'SG' | 'TO' | 'OL' | 'EL'

/** How a stage ended, as Piston reports it (also the fields of the WebSocket's `exit`). */
export interface PistonOutcome {
  /** Exit code, or null when a signal ended the stage. */
  code: number | null
  signal: NodeJS.Signals | null
  /** null when the stage exited 0. */
  status: PistonStatus | null
  /** Why the stage failed, in words; null when it exited 0. */
  message: string | null
}

/** One stage in Piston's response shape. */
export interface PistonStage {
  stdout: string
  stderr: string
  output: string
  code: number | null
  signal: NodeJS.Signals | null
  message: string | null
  status: PistonStatus | null
  /** ms */
  cpu_time: number | null
  /** ms */
  wall_time: number
  /** bytes */
  memory: number | null
}

/** Piston's answer to `POST /api/v2/execute`. */
export interface PistonResult {
  compile?: PistonStage
  run?: PistonStage
  language: string
  version: string
}

function status(end: StageEnd): PistonStatus | null {
  switch (end.kind) {
    case 'exited':
      return end.code === 0 ? null : 'RE'
    case 'signaled':
    case 'out-of-memory':
      return 'SG'
    case 'timed-out':
      return 'TO'
    case 'output-limit':
      return end.stream === 'stdout' ? 'OL' : 'EL'
    default:
      return assertNever(end, 'stage end')
  }
}

/** A stage's end in Piston's fields. */
export function pistonOutcome(end: StageEnd): PistonOutcome {
  return {
    code: end.kind === 'exited' ? end.code : null,
    signal: stageSignal(end),
    status: status(end),
    message: describeStageEnd(end),
  }
}

/** One stage in Piston's shape. */
export function toPistonStage(stage: StageResult): PistonStage {
  const outcome = pistonOutcome(stage.end)
  return {
    stdout: stage.stdout,
    stderr: stage.stderr,
    output: stage.output,
    code: outcome.code,
    signal: outcome.signal,
    message: outcome.message,
    status: outcome.status,
    cpu_time: stage.cpuTimeMs,
    wall_time: stage.wallTimeMs,
    memory: stage.memoryBytes,
  }
}

/**
 * A run in Piston's response shape. As Piston does, a run whose compile stage failed reports
 * the compile stage as `run` too (clients that read only `run` see the error).
 */
export function toPistonResult(result: RunResult): PistonResult {
  const run = result.run ?? result.compile
  return {
    ...(result.compile === undefined ? {} : { compile: toPistonStage(result.compile) }),
    ...(run === undefined ? {} : { run: toPistonStage(run) }),
    language: result.language,
    version: result.version,
  }
}
