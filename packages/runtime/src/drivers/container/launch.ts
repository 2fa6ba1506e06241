/**
 * Starts bubblewrap detached from this process, maps the sandbox's uid range, puts it in its
 * cgroup before anything inside runs, and waits for the agent to report ready.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import type { Readable, Writable } from 'node:stream'
import {
  DriverError,
  errorMessage,
  withTimeout,
  childProcesses,
  processStartTime,
  standardPath,
} from '@sandcell/shared'
import type { Cgroup } from '../../os/cgroups.js'
import { launchFds } from './bwrap-args.js'

export interface LaunchOptions {
  args: string[]
  /** Host uid and gid of the sandbox's root; the range is `[uidBase, uidBase + uidCount)`. */
  uidBase: number
  uidCount: number
  cgroup: Cgroup
  logPath: string
  /** Compiled seccomp program, or undefined to run without one. */
  seccompPath: string | undefined
  readyTimeoutMs: number
  /** The network namespace to start bwrap in (a slot's); absent: this process's. */
  netnsPath?: string
  signal?: AbortSignal
}

export interface Launched {
  /** The outer bwrap process on the host; it lives as long as the sandbox. */
  pid: number
  startTime: number
  child: ChildProcess
}

/** Resolves with the first complete JSON object bwrap writes on its info fd. */
function readInfo(stream: Readable, signal: AbortSignal): Promise<{ 'child-pid': number }> {
  return new Promise((resolve, reject) => {
    let text = ''
    const finish = (err?: Error, value?: { 'child-pid': number }): void => {
      stream.off('data', onData)
      stream.off('end', onEnd)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined && value !== undefined) {
        resolve(value)
      } else {
        reject(err ?? new DriverError('bwrap ended before reporting its child'))
      }
    }
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('utf8')
      try {
        finish(undefined, JSON.parse(text) as { 'child-pid': number })
      } catch {
        // Incomplete JSON: wait for more.
      }
    }
    const onEnd = (): void =>
      finish(new DriverError('bwrap closed its info fd without a child pid'))
    const onAbort = (): void => finish(signal.reason as Error)
    stream.on('data', onData)
    stream.once('end', onEnd)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Resolves when the agent writes its ready line; rejects when the pipe closes first. */
function waitReady(stream: Readable, child: ChildProcess, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = ''
    const cleanup = (): void => {
      stream.off('data', onData)
      stream.off('end', onEnd)
      child.off('exit', onExit)
      signal.removeEventListener('abort', onAbort)
    }
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('utf8')
      if (text.includes('\n')) {
        cleanup()
        if (text.startsWith('ready')) {
          resolve()
        } else {
          reject(new DriverError(`agent reported ${JSON.stringify(text.trim())} instead of ready`))
        }
      }
    }
    const onEnd = (): void => {
      cleanup()
      reject(new DriverError('the agent exited before it was ready'))
    }
    const onExit = (code: number | null, sig: NodeJS.Signals | null): void => {
      cleanup()
      reject(new DriverError(`bwrap exited (${sig ?? `code ${code}`}) before the agent was ready`))
    }
    const onAbort = (): void => {
      cleanup()
      reject(signal.reason as Error)
    }
    stream.on('data', onData)
    stream.once('end', onEnd)
    child.once('exit', onExit)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

function tail(path: string, lines = 8): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

/**
 * Launches the sandbox. On failure it kills whatever started (via the cgroup) and throws a
 * DriverError quoting the end of the sandbox's log.
 */
export async function launchSandbox(options: LaunchOptions): Promise<Launched> {
  const logFd = openSync(options.logPath, 'a', 0o600)
  const seccompFd =
    options.seccompPath === undefined ? 'ignore' : openSync(options.seccompPath, 'r')
  let child: ChildProcess
  try {
    // Its own session and process group: the sandbox must outlive this process and must not
    // receive the terminal's signals.
    const stdio = ['ignore', logFd, logFd, 'pipe', 'pipe', 'pipe', seccompFd] as const
    const uid = String(options.uidBase)
    child =
      options.netnsPath === undefined
        ? spawn('bwrap', options.args, {
            detached: true,
            uid: options.uidBase,
            gid: options.uidBase,
            env: {},
            stdio: [...stdio],
          })
        : // Joining a namespace takes root: nsenter joins it, drops to the sandbox's uid (and
          // every supplementary group), then becomes bwrap in the same process.
          spawn(
            'nsenter',
            [`--net=${options.netnsPath}`, '-S', uid, '-G', uid, '--', 'bwrap', ...options.args],
            { detached: true, env: { PATH: standardPath }, stdio: [...stdio] },
          )
  } finally {
    closeSync(logFd)
    if (typeof seccompFd === 'number') {
      closeSync(seccompFd)
    }
  }
  const spawnError = new Promise<never>((_, reject) => {
    child.once('error', (err) =>
      reject(
        new DriverError(`cannot start bwrap: ${err.message}; is bubblewrap installed?`, {
          cause: err,
        }),
      ),
    )
  })
  // Node types stdio as a 5-tuple; with more entries in the spawn's stdio array there are more.
  const stdio = child.stdio as unknown as (Readable | Writable | null)[]
  // Into the cgroup at once, so that what bwrap starts is in it. The sandbox's init, which bwrap
  // may clone before this write lands, is moved in below, or killed as bwrap's child on failure.
  let cgroupError: unknown
  if (child.pid !== undefined) {
    try {
      options.cgroup.addProcess(child.pid)
    } catch (err) {
      // bwrap already exited (bad arguments: the error surfaces below from its info fd), or the
      // cgroup is gone (removed under us): then nothing may run outside it.
      cgroupError = err
    }
  }
  const ready = stdio[launchFds.ready] as Readable
  const block = stdio[launchFds.userNamespaceBlock] as Writable
  const info = stdio[launchFds.info] as Readable
  const signal = withTimeout(options.readyTimeoutMs, options.signal)
  try {
    if (
      cgroupError !== undefined &&
      child.pid !== undefined &&
      processStartTime(child.pid) !== undefined
    ) {
      throw new DriverError(`cannot put bwrap in its cgroup: ${errorMessage(cgroupError)}`, {
        cause: cgroupError,
      })
    }
    const { 'child-pid': sandboxPid } = await Promise.race([readInfo(info, signal), spawnError])
    const pid = child.pid
    if (pid === undefined) {
      throw new DriverError('bwrap has no pid')
    }
    const map = `0 ${options.uidBase} ${options.uidCount}\n`
    writeFileSync(`/proc/${sandboxPid}/uid_map`, map)
    writeFileSync(`/proc/${sandboxPid}/gid_map`, map)
    // Nothing inside has run yet: from here every process the sandbox makes is in its cgroup.
    options.cgroup.addProcess(pid)
    options.cgroup.addProcess(sandboxPid)
    const startTime = processStartTime(pid)
    if (startTime === undefined) {
      throw new DriverError('bwrap exited during setup')
    }
    block.end('x')
    await Promise.race([waitReady(ready, child, signal), spawnError])
    return { pid, startTime, child }
  } catch (err) {
    // bwrap first (it is outside any namespace we kill through), with the sandbox init it
    // cloned (which may predate our cgroup write), then whatever it started.
    if (child.pid !== undefined) {
      for (const pid of [...childProcesses(child.pid), child.pid]) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // Already gone.
        }
      }
    }
    await options.cgroup.killAll().catch(() => undefined)
    const log = tail(options.logPath)
    const reason =
      signal.aborted && !(options.signal?.aborted ?? false)
        ? `the agent was not ready within ${options.readyTimeoutMs} ms`
        : errorMessage(err)
    throw new DriverError(`sandbox failed to start: ${reason}${log ? `\n${log}` : ''}`, {
      cause: err,
    })
  } finally {
    for (const stream of [ready, block, info]) {
      stream.destroy()
    }
    child.unref()
  }
}
