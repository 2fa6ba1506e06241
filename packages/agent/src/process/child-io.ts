/** The one interface over a child process, whether it talks through pipes or a pseudo-terminal. */
import type { ExitOutcome } from '@sandcell/protocol'

/** Where a chunk of output came from. */
export type OutputChannel = 'stdout' | 'stderr' | 'pty'

/** Receives output as it arrives, in order per channel. */
export type OutputListener = (channel: OutputChannel, chunk: Uint8Array) => void

/** What the agent needs to start a child. */
export interface SpawnSpec {
  /** Host path of the executable (already found and checked). */
  file: string
  args: readonly string[]
  env: Readonly<Record<string, string>>
  /** Host path of the working directory. */
  cwd: string
  uid: number
  gid: number
  onOutput: OutputListener
}

/** A started child in its own process group (session). */
export interface ChildIo {
  readonly pid: number
  readonly kind: 'pipe' | 'pty'
  /** Stops reading output (back-pressure): the child blocks once the pipe or terminal is full. */
  pauseOutput(): void
  resumeOutput(): void
  /**
   * Writes to stdin (pipe) or to the terminal (pty); resolves once handed to the OS.
   * @throws FailedPreconditionError when stdin is closed or was not requested.
   */
  write(data: Uint8Array): Promise<void>
  /**
   * Closes stdin (EOF for the child); a no-op when already closed.
   * @throws FailedPreconditionError for a pty (send Ctrl-D instead).
   */
  closeStdin(): void
  /**
   * Resizes the terminal.
   * @throws FailedPreconditionError for a pipe process.
   */
  resize(cols: number, rows: number): void
  /** Sends `signal` to the child's whole process group; a no-op once it is gone. */
  kill(signal: NodeJS.Signals): void
  /** Resolves after the child exited and its output was drained. Never rejects. */
  readonly finished: Promise<ExitOutcome>
}

/**
 * Sends a signal to a process group, falling back to the leader alone (whose group may be gone);
 * errors for processes that already exited are ignored.
 */
export function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') {
      throw err
    }
    try {
      process.kill(pid, signal)
    } catch (leaderErr) {
      if ((leaderErr as NodeJS.ErrnoException).code !== 'ESRCH') {
        throw leaderErr
      }
    }
  }
}
