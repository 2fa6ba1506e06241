/**
 * What `sandbox run` and `sandbox exec` share about ending: the exit codes of sandcell's own
 * failures, the one-line reason a command was killed, stdin forwarding and Ctrl-C handling.
 */
import type { RunCommandResult } from '@sandcell/envd-client'
import { shellExitCode, signalNumber } from '@sandcell/protocol'
import { NotFoundError, errorMessage } from '@sandcell/shared'

/** Exit code for failures of sandcell itself (not of the command), as `docker run` uses. */
export const exitSandcellFailed = 125
/** Exit code for a command that does not exist, as shells use. */
export const exitNotFound = 127
/** Exit code of a template build that ran and failed (a step, its base, its start command). */
export const exitBuildFailed = 1
/** Exit code after Ctrl-C (128 + SIGINT), as shells give it. */
export const exitInterrupted = 130

/** What the CLI knows about why a command may have been killed. */
export interface KillCircumstances {
  /** The `--timeout-ms` deadline killed it. */
  timedOut: boolean
  timeoutMs?: number | undefined
  /** The sandbox's memory limit killed it (known only where the host sees the cgroup). */
  oomKilled?: boolean
  memoryMiB?: number | undefined
  /** The user interrupted the CLI (SIGINT, SIGTERM). */
  interrupted: boolean
}

/** Why a command was killed by `signal`, in a phrase: "timed out after 500 ms", "SIGTERM (signal 15)". */
export function killReason(signal: NodeJS.Signals, why: KillCircumstances): string {
  if (why.timedOut) {
    return `timed out after ${why.timeoutMs} ms`
  }
  if (why.oomKilled === true) {
    return `out of memory (limit ${why.memoryMiB} MiB)`
  }
  if (why.interrupted) {
    return 'interrupted'
  }
  return `${signal} (signal ${signalNumber(signal)})`
}

/**
 * The CLI's exit code for a finished command: its own code, or 128 + signal with a line on
 * stderr saying why it was killed.
 */
export function commandExitCode(
  cmd: string,
  result: Pick<RunCommandResult, 'outcome'>,
  why: KillCircumstances,
  stderr: NodeJS.WritableStream = process.stderr,
): number {
  if (result.outcome.signal !== null) {
    stderr.write(`sandcell: ${cmd} killed: ${killReason(result.outcome.signal, why)}\n`)
  }
  return shellExitCode(result.outcome)
}

/**
 * Reports a failure of running a command and returns the exit code: 127 when the agent could not
 * find the command (`commandStarted`: the sandbox was there to ask), else 125.
 */
export function failureExitCode(
  err: unknown,
  cmd: string,
  commandStarted: boolean,
  stderr: NodeJS.WritableStream = process.stderr,
): number {
  if (err instanceof NotFoundError && commandStarted) {
    stderr.write(`sandcell: ${cmd}: command not found (${errorMessage(err)})\n`)
    return exitNotFound
  }
  stderr.write(`sandcell: ${errorMessage(err)}\n`)
  return exitSandcellFailed
}

/** The CLI's stdin as chunks, for forwarding to a command. */
export async function* readStdin(): AsyncGenerator<Uint8Array> {
  for await (const chunk of process.stdin) {
    yield chunk as Buffer
  }
}

export interface Interrupts {
  /** Aborts on SIGINT or SIGTERM. */
  readonly signal: AbortSignal
  /** Whether SIGINT or SIGTERM arrived. */
  interrupted(): boolean
  /** Stops listening. */
  dispose(): void
}

/** Turns SIGINT and SIGTERM into an abort, so the command in the sandbox is killed. */
export function listenForInterrupts(): Interrupts {
  let count = 0
  const abort = new AbortController()
  const onSignal = (): void => {
    count += 1
    abort.abort(new Error('interrupted'))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return {
    signal: abort.signal,
    interrupted: () => count > 0,
    dispose() {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    },
  }
}
