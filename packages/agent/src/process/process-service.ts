/** envd's process.Process service: start, re-attach, list, input, signals and PTY resize. */
import type { HandlerContext, ServiceImpl } from '@connectrpc/connect'
import {
  Signal,
  usernameFromAuthorization,
  type Process,
  type ProcessInput,
  type StartRequest,
} from '@sandcell/protocol'
import {
  FailedPreconditionError,
  FileNotFoundError,
  InvalidArgumentError,
  assertNever,
} from '@sandcell/shared'
import type { AgentContext } from '../agent-context.js'
import { keepaliveIntervalMs, withKeepalive } from '../async-queue.js'
import {
  asUser,
  requireDirectory,
  resolvePath,
  type FileOperationContext,
} from '../filesystem/file-operations.js'
import type { ResolvedPath } from '../filesystem/resolve-inside.js'
import { expandUserPath } from '../filesystem/user-paths.js'
import { resolveRequestUser } from '../request-user.js'
import { findExecutable } from './executable.js'
import {
  startManagedProcess,
  type ManagedProcess,
  type ProcessEventInit,
} from './managed-process.js'
import type { Subscription } from './output-fanout.js'
import { buildProcessEnv } from './process-env.js'
import type { ProcessTable } from './process-table.js'
import type { SandboxUser } from './users.js'

/** StartResponse and ConnectResponse alike: one event. */
type StreamResponseInit = { event: ProcessEventInit }

/** Terminal size when a PTY request leaves it at 0. */
const defaultPtySize = { cols: 80, rows: 24 }
/** Largest terminal dimension accepted (node-pty takes 16-bit sizes). */
const maxPtyDimension = 10_000

/** Dependencies of {@link createProcessService}. */
export interface ProcessServiceOptions {
  context: AgentContext
  table: ProcessTable
}

/**
 * The Process service. A process outlives the stream that started it: a client that disconnects
 * (the SDK's `disconnect()`) stops receiving events, nothing more. Processes end on their own, by
 * SendSignal, when the Start request's deadline passes (envd kills on `Connect-Timeout-Ms`,
 * which the SDK sets from `timeoutMs`), or at agent shutdown.
 */
export function createProcessService(options: ProcessServiceOptions): ServiceImpl<typeof Process> {
  const { context, table } = options
  const { state, log } = context

  const requestUser = (handler: HandlerContext): SandboxUser =>
    resolveRequestUser(
      context,
      usernameFromAuthorization(handler.requestHeader.get('authorization')),
    )

  /** The working directory: the request's (must exist), else /init's default or the home. */
  const workingDirectory = (
    request: StartRequest,
    user: SandboxUser,
    ops: FileOperationContext,
  ): ResolvedPath => {
    const requested = request.process?.cwd
    if (requested !== undefined && requested !== '') {
      const path = expandUserPath(requested, user, state.defaultWorkdir)
      return asUser(ops, 'use as working directory', path, () => {
        const resolved = resolvePath(ops, path)
        try {
          requireDirectory(resolved, path)
        } catch (err) {
          if (err instanceof FileNotFoundError) {
            throw new InvalidArgumentError(`cwd ${JSON.stringify(path)} does not exist`, {
              cause: err,
            })
          }
          throw err
        }
        return resolved
      })
    }
    const fallback = expandUserPath('', user, state.defaultWorkdir)
    try {
      return asUser(ops, 'use as working directory', fallback, () => {
        const resolved = resolvePath(ops, fallback)
        requireDirectory(resolved, fallback)
        return resolved
      })
    } catch (err) {
      // A user without a home still gets to run commands, from the root like a daemon.
      log.debug({ err, user: user.name, cwd: fallback }, 'default cwd unusable, using /')
      return { hostPath: context.root, sandboxPath: '/' }
    }
  }

  /** Streams a subscription to a client until the process ends or the client goes away. */
  async function* stream(
    subscription: Subscription<ProcessEventInit>,
    handler: HandlerContext,
  ): AsyncGenerator<StreamResponseInit> {
    const onAbort = (): void => subscription.close()
    handler.signal.addEventListener('abort', onAbort, { once: true })
    try {
      const events = withKeepalive<ProcessEventInit>(
        subscription,
        keepaliveIntervalMs(handler.requestHeader.get('keepalive-ping-interval')),
        () => ({ event: { case: 'keepalive', value: {} } }),
      )
      for await (const event of events) {
        yield { event }
      }
    } finally {
      handler.signal.removeEventListener('abort', onAbort)
      subscription.close()
    }
  }

  return {
    async *start(request, handler) {
      const user = requestUser(handler)
      const config = request.process
      if (config === undefined || config.cmd === '') {
        throw new InvalidArgumentError('process.cmd is required')
      }
      const creds = { uid: user.uid, gid: user.gid }
      const ops: FileOperationContext = { root: context.root, users: context.users, creds }
      const cwd = workingDirectory(request, user, ops)
      const pty = request.pty === undefined ? undefined : ptySize(request.pty.size)
      const env = buildProcessEnv({
        user,
        cwd: cwd.sandboxPath,
        sandboxEnv: state.envVars,
        requestEnv: config.envs,
        defaults: pty === undefined ? undefined : { TERM: 'xterm-256color' },
      })
      const file = findExecutable({
        cmd: config.cmd,
        path: env.PATH ?? '',
        cwd: cwd.hostPath,
        creds,
      })
      const { process, subscription } = await startManagedProcess({
        spec: { file, args: config.args, env, cwd: cwd.hostPath, uid: user.uid, gid: user.gid },
        pty,
        stdin: request.stdin === true,
        tag: request.tag,
        config: { cmd: config.cmd, args: config.args, envs: config.envs, cwd: config.cwd },
        stallMs: context.config.subscriberStallMs,
        log,
      })
      table.add(process)
      log.info(
        { processPid: process.pid, cmd: config.cmd, user: user.name, pty: pty !== undefined },
        'process started',
      )
      watchLifetime(process, handler.timeoutMs())
      yield* stream(subscription, handler)
    },

    async *connect(request, handler) {
      const process = table.get(request.process)
      yield* stream(process.subscribe(), handler)
    },

    list() {
      return {
        processes: table.list().map((process) => ({
          config: process.config,
          pid: process.pid,
          ...(process.tag === undefined ? {} : { tag: process.tag }),
        })),
      }
    },

    async sendInput(request) {
      await writeInput(table.get(request.process), request.input)
      return {}
    },

    async streamInput(requests) {
      let process: ManagedProcess | undefined
      for await (const request of requests) {
        const event = request.event
        switch (event.case) {
          case 'start':
            process = table.get(event.value.process)
            break
          case 'data':
            if (process === undefined) {
              throw new InvalidArgumentError(
                'the first StreamInput message must be start (which process)',
              )
            }
            await writeInput(process, event.value.input)
            break
          case 'keepalive':
            break
          case undefined:
            throw new InvalidArgumentError('StreamInput message has no event')
          default:
            assertNever(event, 'stream input event')
        }
      }
      return {}
    },

    closeStdin(request) {
      table.get(request.process).io.closeStdin()
      return {}
    },

    sendSignal(request) {
      const process = table.get(request.process)
      switch (request.signal) {
        case Signal.SIGTERM:
          process.io.kill('SIGTERM')
          break
        case Signal.SIGKILL:
          process.io.kill('SIGKILL')
          break
        case Signal.UNSPECIFIED:
          throw new InvalidArgumentError('signal is required (SIGTERM or SIGKILL)')
        default:
          throw new InvalidArgumentError(`unsupported signal ${String(request.signal)}`)
      }
      return {}
    },

    update(request) {
      const process = table.get(request.process)
      if (request.pty?.size === undefined) {
        throw new InvalidArgumentError('pty.size is required to resize a terminal')
      }
      const size = ptySize(request.pty.size)
      process.io.resize(size.cols, size.rows)
      return {}
    },
  }

  /** Logs the end, and kills the process when the Start request's deadline passes (like envd). */
  function watchLifetime(process: ManagedProcess, deadlineMs: number | undefined): void {
    const timer =
      deadlineMs === undefined || deadlineMs <= 0
        ? undefined
        : setTimeout(() => {
            log.info(
              { processPid: process.pid, deadlineMs },
              'start deadline passed, killing process group',
            )
            process.io.kill('SIGKILL')
          }, deadlineMs)
    // finished never rejects; the catch only keeps a bug from becoming an unhandled rejection.
    process.finished
      .then((outcome) => {
        clearTimeout(timer)
        log.info({ processPid: process.pid, ...outcome }, 'process ended')
      })
      .catch((err: unknown) => log.error({ err }, 'process end handling failed'))
  }
}

/** Writes stdin or terminal input, whichever the message carries and the process has. */
async function writeInput(process: ManagedProcess, input: ProcessInput | undefined): Promise<void> {
  const choice = input?.input ?? { case: undefined }
  switch (choice.case) {
    case 'stdin':
      if (process.io.kind === 'pty') {
        throw new FailedPreconditionError(
          `process ${process.pid} runs on a terminal: send pty input, not stdin`,
        )
      }
      await process.io.write(choice.value)
      return
    case 'pty':
      if (process.io.kind === 'pipe') {
        throw new FailedPreconditionError(
          `process ${process.pid} has no terminal: send stdin input, not pty`,
        )
      }
      await process.io.write(choice.value)
      return
    case undefined:
      throw new InvalidArgumentError('input is required (stdin or pty bytes)')
    default:
      assertNever(choice, 'process input')
  }
}

/** A PTY size with defaults for 0 and a sanity limit. */
function ptySize(size: { cols: number; rows: number } | undefined): { cols: number; rows: number } {
  const cols = size?.cols || defaultPtySize.cols
  const rows = size?.rows || defaultPtySize.rows
  if (cols > maxPtyDimension || rows > maxPtyDimension) {
    throw new InvalidArgumentError(
      `pty size ${cols}x${rows} is too large (at most ${maxPtyDimension})`,
    )
  }
  return { cols, rows }
}
