/**
 * Runs one command in a sandbox through its agent: streams output to callbacks, forwards stdin,
 * enforces a deadline, and returns the outcome in shell terms (128 + signal when killed).
 */
import { Code, ConnectError } from '@connectrpc/connect'
import {
  Signal,
  basicAuthorization,
  defaultUser,
  fromConnectError,
  parseExitStatus,
  shellExitCode,
  type ExitOutcome,
} from '@sandcell/protocol'
import { NotFoundError, TimeoutError } from '@sandcell/shared'
import type { EnvdClient } from './envd-client.js'

/** What running a command takes: envd's process client, over a socket or through the server. */
export type ProcessConnection = Pick<EnvdClient, 'process'>

export interface RunCommandOptions {
  cmd: string
  args?: string[]
  envs?: Record<string, string>
  cwd?: string
  /** Linux user inside the sandbox. @default 'user' */
  user?: string
  /** The agent's access token, once one was set (envd's X-Access-Token). */
  accessToken?: string
  /** Bytes fed to the process's stdin, then closed; without it stdin is empty. */
  stdin?: AsyncIterable<Uint8Array> | Uint8Array
  /** Run in a pseudo-terminal of this size; output then arrives through `onStdout`. */
  pty?: { cols: number; rows: number }
  onStdout?: (chunk: Uint8Array) => void
  onStderr?: (chunk: Uint8Array) => void
  /** Kills the process (SIGKILL) when it runs longer. */
  timeoutMs?: number
  /** Aborting kills the process. */
  signal?: AbortSignal
  /**
   * Aborting kills the process (SIGKILL to its group) and still waits for its end event, so
   * the result and the output up to then arrive (unlike `signal`, which also ends the stream).
   */
  kill?: AbortSignal
  /** Called with the pid once the process started. */
  onStart?: (pid: number) => void
}

export interface RunCommandResult {
  pid: number
  outcome: ExitOutcome
  /** Shell-style exit code: the process's code, or 128 + signal. */
  exitCode: number
  /** envd's status text, e.g. "exit status 1" or "signal: killed". */
  status: string
  /** True when the deadline killed it. */
  timedOut: boolean
}

async function* asChunks(
  input: AsyncIterable<Uint8Array> | Uint8Array,
): AsyncGenerator<Uint8Array> {
  if (input instanceof Uint8Array) {
    yield input
    return
  }
  yield* input
}

/**
 * @throws NotFoundError when the command does not exist, TimeoutError never (a timeout is a
 * result), SandcellError subclasses for agent failures.
 */
export async function runCommand(
  connection: ProcessConnection,
  options: RunCommandOptions,
): Promise<RunCommandResult> {
  const headers: Record<string, string> = {
    authorization: basicAuthorization(options.user ?? defaultUser),
    ...(options.accessToken === undefined ? {} : { 'x-access-token': options.accessToken }),
  }
  const stream = new AbortController()
  const signals = [stream.signal, ...(options.signal === undefined ? [] : [options.signal])]
  let pid: number | undefined
  let timedOut = false
  const kill = async (): Promise<void> => {
    if (pid === undefined) {
      return
    }
    await connection.process
      .sendSignal(
        { process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL },
        { headers },
      )
      .catch(() => undefined)
  }
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true
          void kill()
        }, options.timeoutMs)
  const onAbort = (): void => void kill()
  options.signal?.addEventListener('abort', onAbort, { once: true })
  options.kill?.addEventListener('abort', onAbort, { once: true })
  let stdinDone: Promise<void> = Promise.resolve()
  let ended = false
  try {
    const events = connection.process.start(
      {
        process: {
          cmd: options.cmd,
          args: options.args ?? [],
          envs: options.envs ?? {},
          ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
        },
        stdin: options.stdin !== undefined,
        ...(options.pty === undefined ? {} : { pty: { size: options.pty } }),
      },
      { headers, signal: AbortSignal.any(signals) },
    )
    for await (const { event } of events) {
      switch (event?.event.case) {
        case 'start':
          pid = event.event.value.pid
          if (options.stdin !== undefined) {
            // Handled at once: a process that exits without reading closes its stdin early.
            stdinDone = forwardStdin(connection, pid, options.stdin, headers, () => ended).catch(
              () => undefined,
            )
          }
          options.onStart?.(pid)
          // A deadline that passed before the process started found no pid to kill.
          if (options.kill?.aborted === true || timedOut) {
            void kill()
          }
          break
        case 'data': {
          const output = event.event.value.output
          if (output.case === 'stdout' || output.case === 'pty') {
            options.onStdout?.(output.value)
          } else if (output.case === 'stderr') {
            options.onStderr?.(output.value)
          }
          break
        }
        case 'end': {
          const { status, exitCode } = event.event.value
          const outcome = parseExitStatus(status, exitCode)
          ended = true
          // A stream may never end (an interactive client): it stops at its next chunk.
          if (options.stdin instanceof Uint8Array) {
            await stdinDone
          }
          return {
            pid: pid ?? 0,
            outcome,
            exitCode: shellExitCode(outcome),
            status,
            timedOut,
          }
        }
        case 'keepalive':
        case undefined:
          break
      }
    }
    throw new TimeoutError('the agent closed the process stream without an end event')
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) {
      throw new NotFoundError(err.rawMessage, { cause: err })
    }
    throw fromConnectError(err)
  } finally {
    clearTimeout(timer)
    options.signal?.removeEventListener('abort', onAbort)
    options.kill?.removeEventListener('abort', onAbort)
    stream.abort()
  }
}

async function forwardStdin(
  connection: ProcessConnection,
  pid: number,
  input: AsyncIterable<Uint8Array> | Uint8Array,
  headers: Record<string, string>,
  stopped: () => boolean,
): Promise<void> {
  const selector = { selector: { case: 'pid' as const, value: pid } }
  for await (const chunk of asChunks(input)) {
    if (stopped()) {
      return
    }
    await connection.process.sendInput(
      { process: selector, input: { input: { case: 'stdin', value: chunk } } },
      { headers },
    )
  }
  await connection.process.closeStdin({ process: selector }, { headers })
}
