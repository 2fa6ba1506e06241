/** One live container sandbox: its cgroup, mounts, bwrap process and agent connection. */
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, rmSync, statfsSync } from 'node:fs'
import { join } from 'node:path'
import {
  FailedPreconditionError,
  InvalidArgumentError,
  type Logger,
  type SandboxId,
  withTimeout,
  delay,
  isProcessAlive,
} from '@sandcell/shared'
import { persistSlot, type EgressPolicy } from '@sandcell/network'
import { createAgentConnection, type AgentConnection } from '@sandcell/envd-client'
import {
  changeNetwork,
  releaseNetwork,
  type SandboxNetworkHandle,
} from '../../sandbox-network-handle.js'
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
import { saveDiskImage } from '../../disks/saved-disk.js'
import { fsFreeze } from '../../os/native.js'
import { toCgroupLimits } from './limits.js'
import { writeState, type PersistedState, type SandboxPaths } from './sandbox-dir.js'
import { unmountSandboxRoot } from './writable-disk.js'

/** The disk image's name inside a snapshot directory. */
export const snapshotDiskName = 'disk.ext4'

/** How often an adopted sandbox (not our child, so no exit event) is checked for liveness. */
const adoptedPollMs = 1000

export interface ContainerSandboxOptions {
  info: SandboxInfo
  paths: SandboxPaths
  cgroup: Cgroup
  state: PersistedState
  /** Present when this process launched the sandbox; absent when it was adopted. */
  child?: ChildProcess
  paused: boolean
  log: Logger
  network?: SandboxNetworkHandle
}

/**
 * Removes everything a container sandbox holds on the host; safe to run on partial leftovers.
 * The network slot goes last: its namespace is free only once no process of the sandbox is in it.
 */
export async function removeContainerLeftovers(
  paths: SandboxPaths,
  cgroup: Cgroup,
  network?: SandboxNetworkHandle,
): Promise<void> {
  await cgroup.killAll()
  unmountSandboxRoot(paths)
  rmSync(paths.dir, { recursive: true, force: true })
  if (cgroup.exists()) {
    await cgroup.remove()
  }
  await releaseNetwork(network)
}

export class ContainerSandbox implements Sandbox {
  readonly id: SandboxId
  readonly info: SandboxInfo
  readonly ended: Promise<DestroyReason>
  #state: SandboxState
  readonly #paths: SandboxPaths
  readonly #cgroup: Cgroup
  readonly #persisted: PersistedState
  readonly #log: Logger
  readonly #network: SandboxNetworkHandle | undefined
  #connection: AgentConnection | undefined
  #resolveEnded!: (reason: DestroyReason) => void
  #poll: NodeJS.Timeout | undefined
  #destroyed: Promise<void> | undefined

  constructor(options: ContainerSandboxOptions) {
    this.id = options.info.id
    this.info = options.info
    this.#paths = options.paths
    this.#cgroup = options.cgroup
    this.#persisted = options.state
    this.#log = options.log
    this.#network = options.network
    this.#state = options.paused ? 'paused' : 'running'
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve
    })
    if (options.child !== undefined) {
      options.child.once('exit', (code, signal) => {
        this.#resolveEnded({ reason: `sandbox exited (${signal ?? `code ${code}`})` })
      })
    } else {
      const { bwrapPid, bwrapStartTime } = options.state
      this.#poll = setInterval(() => {
        if (!isProcessAlive(bwrapPid, bwrapStartTime)) {
          this.#resolveEnded({ reason: 'sandbox exited' })
        }
      }, adoptedPollMs)
      this.#poll.unref()
    }
  }

  get state(): SandboxState {
    return this.#state
  }

  connect(): AgentConnection {
    this.#connection ??= createAgentConnection(this.#paths.agentSocket)
    return this.#connection
  }

  #persist(): void {
    writeState(this.#paths, {
      ...this.#persisted,
      paused: this.#state === 'paused',
      limits: this.info.limits,
      labels: this.info.labels,
      ...(this.#network === undefined ? {} : { network: persistSlot(this.#network.slot) }),
    })
  }

  async pause({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#cgroup.freeze({ signal })
    this.#state = 'paused'
    this.#persist()
  }

  async resume({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#cgroup.thaw({ signal })
    this.#state = 'running'
    this.#persist()
  }

  setLimits(limits: SandboxLimits): Promise<void> {
    if (limits.diskMiB !== this.info.limits.diskMiB) {
      throw new InvalidArgumentError(
        `the disk size of a container sandbox is fixed at creation (${this.info.limits.diskMiB} MiB)`,
      )
    }
    // A hand-over: from here on the sandbox is in use, so it gets a normal CPU share.
    this.#cgroup.setLimits(toCgroupLimits(limits))
    this.info.limits = { ...limits }
    this.#persist()
    return Promise.resolve()
  }

  setLabels(labels: Record<string, string>): Promise<void> {
    this.info.labels = { ...labels }
    this.#persist()
    return Promise.resolve()
  }

  async setNetwork(egress: EgressPolicy): Promise<void> {
    this.info.network = await changeNetwork(this.#network, this.id, egress)
    this.#persist()
  }

  stats(): Promise<SandboxStats> {
    if (this.#state === 'destroyed') {
      throw new FailedPreconditionError(`sandbox ${this.id} is destroyed`)
    }
    const disk = statfsSync(this.#paths.diskMount)
    return Promise.resolve({
      ...this.#cgroup.stats(),
      diskUsedBytes: (disk.blocks - disk.bfree) * disk.bsize,
      diskTotalBytes: disk.blocks * disk.bsize,
    })
  }

  async snapshot({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    const wasRunning = this.#state === 'running'
    // Processes stopped, then the filesystem flushed and write-blocked: the image is consistent.
    if (wasRunning) {
      await this.#cgroup.freeze(signal === undefined ? {} : { signal })
    }
    try {
      this.#saveDisk(dir)
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw err
    } finally {
      if (wasRunning) {
        await this.#cgroup.thaw()
      }
    }
    return this.#snapshotIn(dir)
  }

  async shutDown({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    try {
      // Every process ends (paused ones too), so nothing writes while the disk is saved.
      await this.#cgroup.killAll(signal === undefined ? {} : { signal })
      this.#saveDisk(dir)
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw err
    } finally {
      await this.destroy({ reason: 'shut down, its disk kept' })
    }
    return this.#snapshotIn(dir)
  }

  /** Copies the disk image into `dir` with its filesystem flushed and write-blocked meanwhile. */
  #saveDisk(dir: string): void {
    fsFreeze(this.#paths.diskMount, true)
    try {
      saveDiskImage(this.#paths.diskImage, join(dir, snapshotDiskName), this.id)
    } finally {
      fsFreeze(this.#paths.diskMount, false)
    }
  }

  #snapshotIn(dir: string): SandboxSnapshot {
    return {
      driver: 'container',
      template: this.info.template,
      diskMiB: this.info.limits.diskMiB,
      dir,
      memory: false,
    }
  }

  destroy(reason: DestroyReason = { reason: 'destroyed' }): Promise<void> {
    this.#destroyed ??= (async () => {
      this.#state = 'destroyed'
      clearInterval(this.#poll)
      this.#connection?.close()
      const started = performance.now()
      await removeContainerLeftovers(this.#paths, this.#cgroup, this.#network)
      // The outer bwrap is in the cgroup too, so it is gone once the cgroup is empty; give the
      // kernel a moment to reap it before we report the sandbox ended.
      const deadline = withTimeout(2000)
      while (isProcessAlive(this.#persisted.bwrapPid, this.#persisted.bwrapStartTime)) {
        if (deadline.aborted) {
          this.#log.warn({ pid: this.#persisted.bwrapPid }, 'bwrap still present after destroy')
          break
        }
        await delay(5)
      }
      this.#log.debug({ durationMs: Math.round(performance.now() - started) }, 'sandbox removed')
      this.#resolveEnded(reason)
    })()
    return this.#destroyed
  }
}
