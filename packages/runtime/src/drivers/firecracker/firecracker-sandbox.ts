/** One live Firecracker microVM sandbox: its process, relay, cgroup, disk and API socket. */
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, rmSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import {
  DriverError,
  FailedPreconditionError,
  InvalidArgumentError,
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
import type { Cgroup } from '../../os/cgroups.js'
import { sparseCopy } from '../../os/native.js'
import { isProcessAlive } from '../../os/processes.js'
import {
  guestRequest,
  parseGuestFields,
  toGuestStats,
  type GuestChannel,
  type GuestStats,
} from '../qemu/guest-ctl.js'
import { endReason, removeVmLeftovers, vmCgroupLimits } from '../qemu/qemu-sandbox.js'
import { syncGuest } from '../qemu/vm-control.js'
import { logTail } from '../qemu/vm-process.js'
import { FirecrackerApi } from './firecracker-api.js'
import {
  ctlVsockPort,
  snapshotFiles,
  vmFiles,
  writeFirecrackerManifest,
  writeFirecrackerState,
  type FirecrackerVmPaths,
  type PersistedFirecrackerState,
} from './firecracker-vm.js'

const adoptedPollMs = 1000
const watchdogIntervalMs = 15_000
const watchdogMisses = 3

export interface FirecrackerSandboxOptions {
  info: SandboxInfo
  paths: FirecrackerVmPaths
  cgroup: Cgroup
  state: PersistedFirecrackerState
  child?: ChildProcess
  paused: boolean
  log: Logger
  firecrackerVersion: string
  overheadMiB: number
  guestTimeoutMs: number
}

/** The guest's control port: sandcell-init behind Firecracker's vsock socket. */
export function ctlChannel(paths: FirecrackerVmPaths): GuestChannel {
  return { socketPath: paths.vsockSocket, vsockPort: ctlVsockPort }
}

export class FirecrackerSandbox implements Sandbox {
  readonly id: SandboxId
  readonly info: SandboxInfo
  readonly ended: Promise<DestroyReason>
  #state: SandboxState
  readonly #paths: FirecrackerVmPaths
  readonly #cgroup: Cgroup
  readonly #persisted: PersistedFirecrackerState
  readonly #log: Logger
  readonly #firecrackerVersion: string
  readonly #overheadMiB: number
  readonly #guestTimeoutMs: number
  readonly #ctl: GuestChannel
  #connection: AgentConnection | undefined
  #resolveEnded!: (reason: DestroyReason) => void
  #poll: NodeJS.Timeout | undefined
  #watchdog: NodeJS.Timeout | undefined
  #misses = 0
  #busy = 0
  #lastGuest: GuestStats | undefined
  #memoryPeakBytes = 0
  #destroyed: Promise<void> | undefined

  constructor(options: FirecrackerSandboxOptions) {
    this.id = options.info.id
    this.info = options.info
    this.#paths = options.paths
    this.#cgroup = options.cgroup
    this.#persisted = options.state
    this.#log = options.log
    this.#firecrackerVersion = options.firecrackerVersion
    this.#overheadMiB = options.overheadMiB
    this.#guestTimeoutMs = options.guestTimeoutMs
    this.#ctl = ctlChannel(options.paths)
    this.#state = options.paused ? 'paused' : 'running'
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve
    })
    const onEnd = (exit: string): void => {
      if (this.#state !== 'destroyed') {
        this.#resolveEnded({ reason: endReason(logTail(this.#paths.log, 40), exit) })
      }
    }
    if (options.child !== undefined) {
      options.child.once('exit', (code, signal) => onEnd(signal ?? `code ${code}`))
    } else {
      const { pid, startTime } = options.state.firecracker
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

  /** A hung guest answers nothing on its control port: end it with a clear error. */
  #checkGuest(): void {
    if (this.#state !== 'running' || this.#busy > 0) {
      this.#misses = 0
      return
    }
    guestRequest(this.#ctl, 'ping', { timeoutMs: this.#guestTimeoutMs })
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
            reason: `the guest stopped answering (${this.#misses} checks): hung`,
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
    writeFirecrackerState(this.#paths, {
      ...this.#persisted,
      paused: this.#state === 'paused',
      limits: this.info.limits,
      labels: this.info.labels,
    })
  }

  async #api<T>(use: (api: FirecrackerApi) => Promise<T>, timeoutMs = 30_000): Promise<T> {
    const api = new FirecrackerApi(this.#paths.apiSocket, { timeoutMs })
    this.#busy++
    try {
      return await use(api)
    } finally {
      this.#busy--
      await api.close()
    }
  }

  async pause(): Promise<void> {
    await this.#api((api) => api.pause())
    this.#state = 'paused'
    this.#persist()
  }

  async resume(): Promise<void> {
    await this.#api(async (api) => {
      await api.resume()
      await api.patchBalloon(this.#balloonMiB(this.info.limits.memoryMiB))
    })
    this.#state = 'running'
    this.#persist()
    await syncGuest(this.#ctl, { timeoutMs: this.#guestTimeoutMs })
    await guestRequest(this.#ctl, `pids ${this.info.limits.pids}`, {
      timeoutMs: this.#guestTimeoutMs,
    })
  }

  /** The balloon holds what the VM's RAM has beyond the sandbox's memory limit. */
  #balloonMiB(memoryMiB: number): number {
    return Math.max(0, this.#persisted.shape.memoryMiB - memoryMiB)
  }

  async setLimits(limits: SandboxLimits): Promise<void> {
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
    const grow = limits.diskMiB > this.info.limits.diskMiB
    if (grow && this.#state === 'paused') {
      throw new FailedPreconditionError('resume the sandbox before growing its disk')
    }
    this.#cgroup.setLimits(vmCgroupLimits(limits, this.#overheadMiB))
    if (this.#state === 'running') {
      await growAndBalloon(this.#paths, limits, this.#balloonMiB(limits.memoryMiB), grow)
      await guestRequest(this.#ctl, `pids ${limits.pids}`, { timeoutMs: this.#guestTimeoutMs })
      if (grow) {
        await guestRequest(this.#ctl, `resize-disk ${limits.diskMiB * 1024 * 1024}`, {
          timeoutMs: this.#guestTimeoutMs,
        })
      }
    }
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
      const answer = await guestRequest(this.#ctl, 'stats', { timeoutMs: this.#guestTimeoutMs })
      this.#lastGuest = toGuestStats(parseGuestFields(answer))
    }
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

  /** Pauses, saves devices and memory (Firecracker's full snapshot) and the disk, resumes. */
  async snapshot({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    const wasPaused = this.#state === 'paused'
    try {
      await this.#api(async (api) => {
        if (!wasPaused) {
          await api.pause()
        }
        try {
          await api.createSnapshot(
            {
              snapshot_path: join(dir, snapshotFiles.state),
              mem_file_path: join(dir, snapshotFiles.memory),
              snapshot_type: 'Full',
            },
            signal === undefined ? {} : { signal },
          )
          sparseCopy(this.#paths.disk, join(dir, snapshotFiles.disk))
        } finally {
          if (!wasPaused) {
            await api.resume()
          }
        }
      }, 300_000)
      writeFirecrackerManifest(dir, {
        version: 1,
        driver: 'firecracker',
        template: this.info.template,
        diskMiB: this.info.limits.diskMiB,
        shape: this.#persisted.shape,
        firecrackerVersion: this.#firecrackerVersion,
        createdAt: new Date().toISOString(),
      })
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw err
    }
    if (!wasPaused) {
      await syncGuest(this.#ctl, { timeoutMs: this.#guestTimeoutMs })
    }
    return {
      driver: 'firecracker',
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
      await removeVmLeftovers(this.#paths, this.#cgroup)
      const { pid, startTime } = this.#persisted.firecracker
      for (let i = 0; i < 400 && isProcessAlive(pid, startTime); i++) {
        await delay(5)
      }
      if (isProcessAlive(pid, startTime)) {
        throw new DriverError(`Firecracker (pid ${pid}) survived the destroy of ${this.id}`)
      }
      this.#resolveEnded(reason)
    })()
    return this.#destroyed
  }
}

/**
 * Applies a new memory limit through the balloon and, when `grow`, the disk's new size (the
 * file grows, then `PATCH /drives` makes Firecracker tell the guest).
 */
export async function growAndBalloon(
  paths: FirecrackerVmPaths,
  limits: SandboxLimits,
  balloonMiB: number,
  grow: boolean,
): Promise<void> {
  const api = new FirecrackerApi(paths.apiSocket)
  try {
    await api.patchBalloon(balloonMiB)
    if (grow) {
      truncateSync(paths.disk, limits.diskMiB * 1024 * 1024)
      await api.patchDrive('disk', vmFiles.disk)
    }
  } finally {
    await api.close()
  }
}
