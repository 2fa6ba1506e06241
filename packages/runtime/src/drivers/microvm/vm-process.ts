/**
 * Host processes of one microVM: the VMM (QEMU or Firecracker) in the VM's network namespace
 * (its network slot's, or a private one), attached to the TAP there, and a socat there that
 * serves the guest's agent on a host Unix socket. Both are detached from this process and live
 * in the VM's cgroup, so the VM outlives a server restart and one cgroup kill removes everything.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs'
import { vmGuestAddress, vmTapAddress, vmTapName, vmTapPrefix } from '@sandcell/network'
import { envdPort } from '@sandcell/protocol'
import { createAgentConnection, type AgentConnection } from '@sandcell/envd-client'
import {
  DriverError,
  delay,
  withTimeout,
  isProcessAlive,
  processStartTime,
  standardPath,
} from '@sandcell/shared'
import type { Cgroup } from '../../os/cgroups.js'

/** Where the agent relay connects, inside the VM's network namespace: the guest's agent. */
export const guestAgentTarget = `${vmGuestAddress}:${envdPort}`

export interface HostProcess {
  pid: number
  startTime: number
}

export interface StartVmmOptions {
  /** For messages: `QEMU`, `Firecracker`. */
  name: string
  binary: string
  args: string[]
  cgroup: Cgroup
  logPath: string
  /** The control socket (QMP, Firecracker's API) whose appearance means the VMM is up. */
  apiSocket: string
  /**
   * The network namespace to run in (a network slot's, whose TAP the VM attaches to); absent:
   * a new one of the VM's own with the same TAP and no way out.
   */
  netnsPath?: string
  /** Working directory: Firecracker resolves the relative paths a snapshot holds from it. */
  cwd?: string
  /** A saved VM state handed to the VMM as fd 3 (QEMU's `migrate-incoming fd:3`). */
  incomingState?: string
  signal?: AbortSignal
}

export interface StartedVmm extends HostProcess {
  child: ChildProcess
}

/**
 * The TAP a VM without a network slot gets in its private namespace: the guest sees the same
 * device and gateway as everywhere (snapshots stay interchangeable), and nothing beyond it.
 * Forwarding is on although there is no route to forward to: a namespace that does not forward
 * drops the guest's packets in silence (its connections would hang until they time out), one
 * that does answers "network unreachable" at once, as a sandbox without a network should.
 */
const privateTapSetup = [
  `ip tuntap add dev ${vmTapName} mode tap`,
  `ip addr add ${vmTapAddress}/${vmTapPrefix} dev ${vmTapName}`,
  `ip link set ${vmTapName} up`,
  'echo 1 > /proc/sys/net/ipv4/ip_forward',
]

/** The last lines of a VM's log, for error messages. */
export function logTail(path: string, lines = 12): string {
  try {
    const text = readFileSync(path, 'utf8')
    return text
      .slice(-Math.max(8192, lines * 200))
      .trimEnd()
      .split('\n')
      .slice(-lines)
      .join('\n')
  } catch {
    return ''
  }
}

/**
 * Starts the VMM detached in `netnsPath`, or in a new network namespace with loopback and the
 * TAP, and in `cgroup`, and waits for its control socket.
 * @throws DriverError with the end of the log when the VMM exits or never opens its socket
 */
export async function startVmm(options: StartVmmOptions): Promise<StartedVmm> {
  const { name } = options
  const logFd = openSync(options.logPath, 'a', 0o600)
  const stateFd =
    options.incomingState === undefined ? 'ignore' : openSync(options.incomingState, 'r')
  let child: ChildProcess
  try {
    const [command, ...args] =
      options.netnsPath === undefined
        ? [
            'unshare',
            '--net',
            '--',
            'sh',
            '-c',
            ['set -e', 'ip link set lo up', ...privateTapSetup, 'exec "$0" "$@"'].join('\n'),
            options.binary,
            ...options.args,
          ]
        : ['nsenter', `--net=${options.netnsPath}`, '--', options.binary, ...options.args]
    child = spawn(command, args, {
      detached: true,
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      env: { PATH: standardPath },
      stdio: ['ignore', logFd, logFd, stateFd],
    })
  } finally {
    closeSync(logFd)
    if (typeof stateFd === 'number') {
      closeSync(stateFd)
    }
  }
  child.unref()
  const exited = new Promise<never>((_, reject) => {
    child.once('error', (err) =>
      reject(new DriverError(`cannot start ${name}: ${err.message}`, { cause: err })),
    )
    child.once('exit', (code, signal) =>
      reject(
        new DriverError(
          `${name} exited (${signal ?? `code ${code}`}) while starting:\n${logTail(options.logPath)}`,
        ),
      ),
    )
  })
  exited.catch(() => undefined) // observed below; a later exit is the sandbox's business
  const pid = child.pid
  if (pid === undefined) {
    await exited
    throw new DriverError(`${name} has no pid`)
  }
  try {
    options.cgroup.addProcess(pid)
  } catch {
    // Already exited: reported below.
  }
  const signal = withTimeout(10_000, options.signal)
  const socketReady = (async () => {
    while (!existsSync(options.apiSocket)) {
      if (signal.aborted) {
        throw new DriverError(
          `${name} did not open its control socket in time:\n${logTail(options.logPath)}`,
        )
      }
      await delay(5)
    }
  })()
  await Promise.race([socketReady, exited])
  const startTime = processStartTime(pid)
  if (startTime === undefined) {
    await Promise.race([exited, delay(100)])
    throw new DriverError(`${name} exited during start`)
  }
  return { pid, startTime, child }
}

/**
 * Waits (at most `timeoutMs`) for a process to be gone, looking every `pollMs`.
 * @returns whether it is gone
 */
export async function waitForExit(
  process: HostProcess,
  timeoutMs: number,
  pollMs: number,
): Promise<boolean> {
  for (let waited = 0; waited < timeoutMs && isHostProcessAlive(process); waited += pollMs) {
    await delay(pollMs)
  }
  return !isHostProcessAlive(process)
}

/** Whether the process still runs (and is the same one: its pid was not reused). */
export function isHostProcessAlive(process: HostProcess): boolean {
  return isProcessAlive(process.pid, process.startTime)
}

/**
 * Starts `socat` in the VMM's network namespace, listening on `agentSocket` (mode 0600) and
 * relaying each connection to the agent's port as seen from there. Returns once the socket
 * exists.
 */
export async function startAgentRelay(options: {
  vmmPid: number
  agentSocket: string
  cgroup: Cgroup
  logPath: string
  /** `host:port` of the agent as seen inside the namespace. */
  target: string
}): Promise<HostProcess> {
  const logFd = openSync(options.logPath, 'a', 0o600)
  let child: ChildProcess
  try {
    child = spawn(
      'nsenter',
      [
        `--net=/proc/${options.vmmPid}/ns/net`,
        '--',
        'socat',
        `UNIX-LISTEN:${options.agentSocket},fork,mode=600,unlink-early`,
        `TCP:${options.target}`,
      ],
      { detached: true, env: { PATH: standardPath }, stdio: ['ignore', 'ignore', logFd] },
    )
  } finally {
    closeSync(logFd)
  }
  child.unref()
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (err) =>
      reject(
        new DriverError(`cannot start socat (apt-get install socat): ${err.message}`, {
          cause: err,
        }),
      ),
    )
    child.once('exit', (code) =>
      reject(new DriverError(`socat exited (code ${code}):\n${logTail(options.logPath, 4)}`)),
    )
  })
  failed.catch(() => undefined)
  const pid = child.pid
  if (pid === undefined) {
    await failed
    throw new DriverError('socat has no pid')
  }
  options.cgroup.addProcess(pid)
  const deadline = withTimeout(5000)
  const listening = (async () => {
    while (!existsSync(options.agentSocket)) {
      if (deadline.aborted) {
        throw new DriverError('socat did not open the agent socket in time')
      }
      await delay(2)
    }
  })()
  await Promise.race([listening, failed])
  const startTime = processStartTime(pid)
  if (startTime === undefined) {
    throw new DriverError('socat exited during start')
  }
  return { pid, startTime }
}

/**
 * Polls the agent through the relay until it answers, the VMM exits, or the deadline passes.
 * @throws DriverError naming the cause, with the end of the VM's log
 */
export async function waitForAgent(options: {
  agentSocket: string
  vmm: HostProcess
  logPath: string
  timeoutMs: number
  signal?: AbortSignal
}): Promise<void> {
  const deadline = withTimeout(options.timeoutMs, options.signal)
  const agent = createAgentConnection(options.agentSocket)
  try {
    await pollAgent(agent, options, deadline)
  } finally {
    agent.close()
  }
}

async function pollAgent(
  agent: AgentConnection,
  options: Parameters<typeof waitForAgent>[0],
  deadline: AbortSignal,
): Promise<void> {
  for (;;) {
    if (await agent.healthy()) {
      return
    }
    if (!isProcessAlive(options.vmm.pid, options.vmm.startTime)) {
      throw new DriverError(`the VM ended before its agent answered:\n${logTail(options.logPath)}`)
    }
    if (deadline.aborted) {
      if (options.signal?.aborted ?? false) {
        throw options.signal?.reason as Error
      }
      throw new DriverError(
        `the agent did not answer within ${options.timeoutMs} ms:\n${logTail(options.logPath)}`,
      )
    }
    await delay(25)
  }
}
