/** One live microVM sandbox: its QEMU, relay, cgroup, disk, and the guest's control port. */
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, rmSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import {
  DriverError,
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  delay,
  errorMessage,
  type Logger,
  type SandboxId,
} from '@sandcell/shared'
import { createAgentConnection, type AgentConnection } from '../../agent-connection.js'
import type {
  DestroyReason,
  Sandbox,
  SandboxInfo,
  SandboxLimits,
  SandboxSnapshot,
  SandboxState,
  SandboxStats,
} from '../../driver.js'
import type { Cgroup, CgroupLimits } from '../../os/cgroups.js'
import { SyscallError, sparseCopy } from '../../os/native.js'
import { isProcessAlive } from '../../os/processes.js'
import { guestRequest, parseGuestFields, toGuestStats, type GuestStats } from './guest-ctl.js'
import { withQmp, type QmpClient } from './qmp-client.js'
import { saveVmState, setBalloon, syncGuest } from './vm-control.js'
import { logTail } from './vm-process.js'
import {
  snapshotFiles,
  writeSnapshotManifest,
  writeVmState,
  type PersistedVmState,
  type VmSandboxPaths,
} from './vm-state.js'

/** How often an adopted VM (not our child, so no exit event) is checked for liveness. */
const adoptedPollMs = 1000
/** How often a running guest is asked whether it still answers, and how many misses end it. */
const watchdogIntervalMs = 15_000
const watchdogMisses = 3

export interface QemuSandboxOptions {
  info: SandboxInfo
  paths: VmSandboxPaths
  cgroup: Cgroup
  state: PersistedVmState
  /** Present when this process started QEMU; absent when the VM was adopted. */
  child?: ChildProcess
  paused: boolean
  log: Logger
  qemuIdentity: string
  /** Host memory QEMU itself may use on top of the guest's. */
  overheadMiB: number
  /** Deadline of a guest control request, ms (generous under TCG). */
  guestTimeoutMs: number
}

/** The host cgroup's limits for a VM: the guest's memory plus QEMU's own. */
export function vmCgroupLimits(
  limits: SandboxLimits,
  overheadMiB: number,
  background = false,
): CgroupLimits {
  return {
    memoryBytes: (limits.memoryMiB + overheadMiB) * 1024 * 1024,
    cpus: limits.cpus,
    // QEMU's threads and one relay process per open agent connection.
    pidsMax: 1024,
    background,
  }
}

/** Why the VM ended, from the end of its log (the guest's last words). */
export function endReason(log: string, exit: string): string {
  const panic = /Kernel panic[^\n]*/.exec(log)?.[0]
  if (panic !== undefined) {
    return `guest kernel panicked (${exit}): ${panic}`
  }
  const agent = /sandcell-init: powering off: ([^\n]*)/.exec(log)?.[1]
  if (agent !== undefined) {
    return `sandbox exited: ${agent}`
  }
  const fatal = /sandcell-init: fatal: ([^\n]*)/.exec(log)?.[1]
  if (fatal !== undefined) {
    return `sandbox exited: the guest init failed: ${fatal}`
  }
  return `sandbox exited: QEMU ended (${exit})`
}

/** Removes everything a VM sandbox holds on the host; safe on partial leftovers. */
export async function removeVmLeftovers(paths: { dir: string }, cgroup: Cgroup): Promise<void> {
  await cgroup.killAll()
  rmSync(paths.dir, { recursive: true, force: true })
  if (cgroup.exists()) {
    await cgroup.remove()
  }
}

export class QemuSandbox implements Sandbox {
  readonly id: SandboxId
  readonly info: SandboxInfo
  readonly ended: Promise<DestroyReason>
  #state: SandboxState
  readonly #paths: VmSandboxPaths
  readonly #cgroup: Cgroup
  readonly #persisted: PersistedVmState
  readonly #log: Logger
  readonly #qemuIdentity: string
  readonly #overheadMiB: number
  readonly #guestTimeoutMs: number
  #connection: AgentConnection | undefined
  #resolveEnded!: (reason: DestroyReason) => void
  #poll: NodeJS.Timeout | undefined
  #watchdog: NodeJS.Timeout | undefined
  #misses = 0
  /** Operations that stop the guest on purpose: the watchdog leaves it alone meanwhile. */
  #busy = 0
  #lastGuest: GuestStats | undefined
  #memoryPeakBytes = 0
  #destroyed: Promise<void> | undefined

  constructor(options: QemuSandboxOptions) {
    this.id = options.info.id
    this.info = options.info
    this.#paths = options.paths
    this.#cgroup = options.cgroup
    this.#persisted = options.state
    this.#log = options.log
    this.#qemuIdentity = options.qemuIdentity
    this.#overheadMiB = options.overheadMiB
    this.#guestTimeoutMs = options.guestTimeoutMs
    this.#state = options.paused ? 'paused' : 'running'
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve
    })
    const onEnd = (exit: string): void => {
      if (this.#state === 'destroyed') {
        return
      }
      this.#resolveEnded({ reason: endReason(logTail(this.#paths.log, 40), exit) })
    }
    if (options.child !== undefined) {
      options.child.once('exit', (code, signal) => onEnd(signal ?? `code ${code}`))
    } else {
      const { pid, startTime } = options.state.qemu
      this.#poll = setInterval(() => {
        if (!isProcessAlive(pid, startTime)) {
          onEnd('gone')
        }
      }, adoptedPollMs)
      this.#poll.unref()
    }
    this.#watchdog = setInterval(() => this.#checkGuest(), watchdogIntervalMs)
    this.#watchdog.unref()
  }

  get state(): SandboxState {
    return this.#state
  }

  /** A hung guest (the kernel wedged, PID 1 stuck) answers nothing: end it with a clear error. */
  #checkGuest(): void {
    if (this.#state !== 'running' || this.#busy > 0) {
      this.#misses = 0
      return
    }
    guestRequest(this.#paths.ctlSocket, 'ping', { timeoutMs: this.#guestTimeoutMs })
      .then(() => {
        this.#misses = 0
      })
      .catch((err: unknown) => {
        if (this.#state !== 'running' || this.#busy > 0) {
          return
        }
        this.#misses++
        this.#log.warn({ err: errorMessage(err), misses: this.#misses }, 'guest did not answer')
        if (this.#misses >= watchdogMisses) {
          this.#resolveEnded({
            reason: `the guest stopped answering (${this.#misses} checks over ${Math.round((watchdogIntervalMs * this.#misses) / 1000)} s): hung`,
            cause: err,
          })
        }
      })
  }

  connect(): AgentConnection {
    this.#connection ??= createAgentConnection(this.#paths.agentSocket)
    return this.#connection
  }

  #persist(): void {
    writeVmState(this.#paths, {
      ...this.#persisted,
      paused: this.#state === 'paused',
      limits: this.info.limits,
      labels: this.info.labels,
    })
  }

  #qmp<T>(
    use: (qmp: QmpClient) => Promise<T>,
    timeoutMs = 30_000,
    signal?: AbortSignal,
  ): Promise<T> {
    return withQmp(this.#paths.qmpSocket, use, {
      timeoutMs,
      ...(signal === undefined ? {} : { signal }),
    })
  }

  async #withBusy<T>(work: () => Promise<T>): Promise<T> {
    this.#busy++
    try {
      return await work()
    } finally {
      this.#busy--
    }
  }

  /** Stops the vCPUs (QMP), then freezes QEMU itself: a paused VM uses no host CPU at all. */
  async pause({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#withBusy(async () => {
      await this.#qmp((qmp) => qmp.execute('stop'), 10_000, signal)
      await this.#cgroup.freeze(signal === undefined ? {} : { signal })
      this.#state = 'paused'
      this.#persist()
    })
  }

  async resume({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#withBusy(async () => {
      await this.#cgroup.thaw(signal === undefined ? {} : { signal })
      await this.#qmp(
        async (qmp) => {
          await qmp.execute('cont')
          await setBalloon(qmp, this.info.limits.memoryMiB)
        },
        10_000,
        signal,
      )
      this.#state = 'running'
      this.#persist()
    })
    // The guest's clock stood still while paused; limits set meanwhile reach it now.
    await syncGuest(this.#paths.ctlSocket, { timeoutMs: this.#guestTimeoutMs })
    await guestRequest(this.#paths.ctlSocket, `pids ${this.info.limits.pids}`, {
      timeoutMs: this.#guestTimeoutMs,
    })
  }

  async setLimits(limits: SandboxLimits, { signal }: { signal?: AbortSignal } = {}): Promise<void> {
    if (limits.memoryMiB > this.#persisted.shape.memoryMiB) {
      throw new InvalidArgumentError(
        `memoryMiB must be at most ${this.#persisted.shape.memoryMiB} for this VM (its RAM size)`,
      )
    }
    if (limits.diskMiB < this.info.limits.diskMiB) {
      throw new InvalidArgumentError(
        `the disk of a VM sandbox can grow but not shrink (${this.info.limits.diskMiB} MiB now)`,
      )
    }
    if (limits.diskMiB > this.info.limits.diskMiB && this.#state === 'paused') {
      throw new FailedPreconditionError('resume the sandbox before growing its disk')
    }
    // A hand-over: from here on the sandbox is in use, so it gets a normal CPU share.
    this.#cgroup.setLimits(vmCgroupLimits(limits, this.#overheadMiB))
    if (this.#state === 'running') {
      await this.#qmp(
        async (qmp) => {
          await setBalloon(qmp, limits.memoryMiB)
          if (limits.diskMiB > this.info.limits.diskMiB) {
            truncateSync(this.#paths.disk, limits.diskMiB * 1024 * 1024)
            await qmp.execute('block_resize', {
              device: 'disk',
              size: limits.diskMiB * 1024 * 1024,
            })
          }
        },
        10_000,
        signal,
      )
      await guestRequest(this.#paths.ctlSocket, `pids ${limits.pids}`, {
        timeoutMs: this.#guestTimeoutMs,
      })
      if (limits.diskMiB > this.info.limits.diskMiB) {
        await guestRequest(this.#paths.ctlSocket, `resize-disk ${limits.diskMiB * 1024 * 1024}`, {
          timeoutMs: this.#guestTimeoutMs,
        })
      }
    }
    // Paused: the balloon and pids limit are applied on resume.
    this.info.limits = { ...limits }
    this.#persist()
  }

  setLabels(labels: Record<string, string>): Promise<void> {
    this.info.labels = { ...labels }
    this.#persist()
    return Promise.resolve()
  }

  async stats(): Promise<SandboxStats> {
    if (this.#state === 'destroyed') {
      throw new FailedPreconditionError(`sandbox ${this.id} is destroyed`)
    }
    const host = this.#cgroup.stats()
    if (this.#state === 'running') {
      const answer = await guestRequest(this.#paths.ctlSocket, 'stats', {
        timeoutMs: this.#guestTimeoutMs,
      })
      this.#lastGuest = toGuestStats(parseGuestFields(answer))
    }
    // Paused: the guest cannot answer; it has not changed since it was last asked.
    const guest = this.#lastGuest
    const memoryBytes =
      guest === undefined
        ? host.memoryBytes
        : Math.max(0, guest.memTotalBytes - guest.memAvailableBytes)
    this.#memoryPeakBytes = Math.max(this.#memoryPeakBytes, memoryBytes)
    return {
      memoryBytes,
      memoryPeakBytes: this.#memoryPeakBytes,
      memoryLimitBytes: this.info.limits.memoryMiB * 1024 * 1024,
      cpuUsageUs: host.cpuUsageUs,
      pids: guest?.pids ?? 0,
      oomKills: guest?.oomKills ?? 0,
      diskUsedBytes: guest === undefined ? 0 : guest.diskTotalBytes - guest.diskFreeBytes,
      diskTotalBytes: guest?.diskTotalBytes ?? this.info.limits.diskMiB * 1024 * 1024,
    }
  }

  /**
   * Saves the whole VM: devices and RAM through QEMU's migration stream, and the disk copied
   * while the vCPUs are stopped (QEMU drains and flushes I/O on stop), so both agree.
   */
  async snapshot({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    const wasPaused = this.#state === 'paused'
    const started = performance.now()
    try {
      await this.#withBusy(async () => {
        if (wasPaused) {
          await this.#cgroup.thaw()
        }
        try {
          await this.#qmp(
            async (qmp) => {
              const { status } = await qmp.execute<{ status: string }>('query-status')
              if (status === 'running') {
                await qmp.execute('stop')
              } else if (status === 'postmigrate') {
                // Saved before while paused: QEMU saves again only after a cont; the cgroup
                // is thawed but the guest barely runs before the stop below.
                await qmp.execute('cont')
                await qmp.execute('stop')
              }
              try {
                await saveVmState(qmp, join(dir, snapshotFiles.state), false)
                sparseCopy(this.#paths.disk, join(dir, snapshotFiles.disk))
              } finally {
                if (!wasPaused) {
                  await qmp.execute('cont')
                }
              }
            },
            300_000,
            signal,
          )
        } finally {
          if (wasPaused) {
            await this.#cgroup.freeze()
          }
        }
      })
      writeSnapshotManifest(dir, {
        version: 1,
        driver: 'qemu',
        template: this.info.template,
        diskMiB: this.info.limits.diskMiB,
        shape: this.#persisted.shape,
        qemuIdentity: this.#qemuIdentity,
        createdAt: new Date().toISOString(),
      })
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      if (
        err instanceof SyscallError &&
        (err.errnoCode === 'ENOSPC' || err.errnoCode === 'EDQUOT')
      ) {
        throw new ResourceExhaustedError(`no space on the host for a snapshot of ${this.id}`, {
          cause: err,
        })
      }
      throw err
    }
    if (!wasPaused) {
      await syncGuest(this.#paths.ctlSocket, { timeoutMs: this.#guestTimeoutMs })
    }
    this.#log.debug({ durationMs: Math.round(performance.now() - started) }, 'sandbox snapshotted')
    return {
      driver: 'qemu',
      template: this.info.template,
      diskMiB: this.info.limits.diskMiB,
      dir,
      memory: true,
    }
  }

  destroy(reason: DestroyReason = { reason: 'destroyed' }): Promise<void> {
    this.#destroyed ??= (async () => {
      this.#state = 'destroyed'
      clearInterval(this.#poll)
      clearInterval(this.#watchdog)
      this.#connection?.close()
      const started = performance.now()
      await removeVmLeftovers(this.#paths, this.#cgroup)
      const { pid, startTime } = this.#persisted.qemu
      for (let i = 0; i < 400 && isProcessAlive(pid, startTime); i++) {
        await delay(5)
      }
      if (isProcessAlive(pid, startTime)) {
        this.#log.warn({ pid }, 'QEMU still present after destroy')
        throw new DriverError(`QEMU (pid ${pid}) survived the destroy of ${this.id}`)
      }
      this.#log.debug({ durationMs: Math.round(performance.now() - started) }, 'sandbox removed')
      this.#resolveEnded(reason)
    })()
    return this.#destroyed
  }
}
