/**
 * envd's process end status, as the e2b SDK shows it: Go's ProcessState string ("exit status 1",
 * "signal: killed"). Both the agent (formatting) and hosts (parsing back to 128+signal) use this.
 */
import { constants } from 'node:os'

/** Go's names for signals in ProcessState.String(), which envd reports verbatim. */
const goSignalNames: Partial<Record<NodeJS.Signals, string>> = {
  SIGHUP: 'hangup',
  SIGINT: 'interrupt',
  SIGQUIT: 'quit',
  SIGILL: 'illegal instruction',
  SIGTRAP: 'trace/breakpoint trap',
  SIGABRT: 'aborted',
  SIGBUS: 'bus error',
  SIGFPE: 'floating point exception',
  SIGKILL: 'killed',
  SIGUSR1: 'user defined signal 1',
  SIGSEGV: 'segmentation fault',
  SIGUSR2: 'user defined signal 2',
  SIGPIPE: 'broken pipe',
  SIGALRM: 'alarm clock',
  SIGTERM: 'terminated',
  SIGXCPU: 'CPU time limit exceeded',
  SIGXFSZ: 'file size limit exceeded',
}

export interface ExitOutcome {
  /** Exit code when the process exited on its own, else null. */
  code: number | null
  /** Signal that ended the process, else null. */
  signal: NodeJS.Signals | null
}

/** The wire end event for an outcome: envd reports -1 and exited=false for signals. */
export function formatExitStatus(outcome: ExitOutcome): {
  exitCode: number
  exited: boolean
  status: string
} {
  if (outcome.signal !== null) {
    const name = goSignalNames[outcome.signal] ?? `signal ${signalNumber(outcome.signal)}`
    return { exitCode: -1, exited: false, status: `signal: ${name}` }
  }
  const code = outcome.code ?? 0
  return { exitCode: code, exited: true, status: `exit status ${code}` }
}

/** Reads an end status back into an outcome; unknown text gives the exit code as is. */
export function parseExitStatus(status: string, exitCode: number): ExitOutcome {
  const match = /^signal: (.+)$/.exec(status)
  if (match === null) {
    return { code: exitCode, signal: null }
  }
  const name = match[1] as string
  for (const [signal, goName] of Object.entries(goSignalNames)) {
    if (goName === name) {
      return { code: null, signal: signal as NodeJS.Signals }
    }
  }
  const numbered = /^signal (\d+)$/.exec(name)
  if (numbered !== null) {
    const number = Number(numbered[1])
    const signal = Object.entries(constants.signals).find(([, n]) => n === number)?.[0]
    if (signal !== undefined) {
      return { code: null, signal: signal as NodeJS.Signals }
    }
  }
  return { code: exitCode, signal: null }
}

export function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal]
}

/** Shell convention for a process's outcome: its code, or 128 + signal number. */
export function shellExitCode(outcome: ExitOutcome): number {
  return outcome.signal === null ? (outcome.code ?? 0) : 128 + signalNumber(outcome.signal)
}
