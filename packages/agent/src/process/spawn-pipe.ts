/** Starts a child with stdout/stderr pipes (and a stdin pipe when asked) in its own session. */
import type { ExitOutcome } from '@sandcell/protocol'
import {
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  SandcellError,
} from '@sandcell/shared'
import { killGroup, type ChildIo, type SpawnSpec } from './child-io.js'
import { SpawnFailure, nativeSpawn, type NativeChild } from './native-spawn.js'

/** Output still arriving this long after exit is from grandchildren holding the pipes. */
const drainIdleMs = 100
/** At most this long of unpaused reading after exit before the pipes are abandoned. */
const drainMaxMs = 2000

/** Options for {@link spawnPipeProcess}. */
export interface SpawnPipeOptions extends SpawnSpec {
  /** Keep a stdin pipe open; otherwise stdin is /dev/null. */
  stdin: boolean
}

/**
 * Spawns `file` detached (setsid: its own session and process group, so signals reach its
 * children) as uid/gid, which also clears supplementary groups.
 * @throws NotFoundError / PermissionDeniedError when exec fails (ENOENT / EACCES).
 */
export function spawnPipeProcess(options: SpawnPipeOptions): Promise<ChildIo> {
  let child: NativeChild
  try {
    child = nativeSpawn(options)
  } catch (err) {
    return Promise.reject(
      err instanceof SpawnFailure ? spawnError(err, options.file) : (err as Error),
    )
  }
  const { pid, stdout, stderr, stdin } = child
  let stdinOpen = stdin !== null
  // Errors on the pipes (EPIPE when the child stops reading…) are expected; reads end with 'close'.
  stdin?.on('error', () => {
    stdinOpen = false
  })
  stdout.on('error', () => undefined)
  stderr.on('error', () => undefined)

  let paused = false
  let lastDataAt = Date.now()
  stdout.on('data', (chunk: Buffer) => {
    lastDataAt = Date.now()
    options.onOutput('stdout', chunk)
  })
  stderr.on('data', (chunk: Buffer) => {
    lastDataAt = Date.now()
    options.onOutput('stderr', chunk)
  })

  const finished = new Promise<ExitOutcome>((resolve) => {
    let openStreams = 2
    let outcome: ExitOutcome | undefined
    let drainTimer: NodeJS.Timeout | undefined
    let unpausedDrainMs = 0
    const finish = (): void => {
      if (outcome === undefined) {
        return
      }
      clearInterval(drainTimer)
      stdin?.destroy()
      resolve(outcome)
    }
    const onClose = (): void => {
      openStreams -= 1
      if (openStreams === 0) {
        finish()
      }
    }
    stdout.once('close', onClose)
    stderr.once('close', onClose)
    void child.exited.then(({ code, signal }) => {
      outcome = { code, signal }
      if (openStreams === 0) {
        finish()
        return
      }
      // A grandchild may hold the pipes open forever: read what is there, then let go.
      const tickMs = drainIdleMs / 2
      drainTimer = setInterval(() => {
        if (paused) {
          return
        }
        unpausedDrainMs += tickMs
        if (Date.now() - lastDataAt >= drainIdleMs || unpausedDrainMs >= drainMaxMs) {
          stdout.destroy()
          stderr.destroy()
        }
      }, tickMs)
    })
  })

  return Promise.resolve({
    pid,
    kind: 'pipe',
    pauseOutput() {
      paused = true
      stdout.pause()
      stderr.pause()
    },
    resumeOutput() {
      paused = false
      stdout.resume()
      stderr.resume()
    },
    write(data) {
      if (stdin === null) {
        return Promise.reject(
          new FailedPreconditionError(
            `process ${pid} was started without stdin (start it with stdin: true)`,
          ),
        )
      }
      if (!stdinOpen || stdin.writableEnded || stdin.destroyed) {
        return Promise.reject(new FailedPreconditionError(`stdin of process ${pid} is closed`))
      }
      return new Promise((resolve, reject) => {
        stdin.write(data, (err) => {
          if (err === undefined || err === null) {
            resolve()
          } else {
            reject(new FailedPreconditionError(`stdin of process ${pid} is closed`, { cause: err }))
          }
        })
      })
    },
    closeStdin() {
      stdinOpen = false
      stdin?.end()
    },
    resize() {
      throw new FailedPreconditionError(
        `process ${pid} has no terminal to resize (start it with a pty)`,
      )
    },
    kill(signal) {
      killGroup(pid, signal)
    },
    finished,
  })
}

function spawnError(err: SpawnFailure, file: string): SandcellError {
  switch (err.code) {
    case 'ENOENT':
      return new NotFoundError(`command ${JSON.stringify(file)} not found`, { cause: err })
    case 'EACCES':
    case 'EPERM':
      return new PermissionDeniedError(`command ${JSON.stringify(file)} is not executable`, {
        cause: err,
      })
    case undefined:
    default:
      return new SandcellError(`cannot start ${JSON.stringify(file)}: ${err.message}`, {
        cause: err,
      })
  }
}
