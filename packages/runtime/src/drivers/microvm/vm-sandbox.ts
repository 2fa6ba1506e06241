/**
 * What a live microVM sandbox does the same under QEMU and Firecracker: the guest's control port
 * (hang detection, stats, pids and disk limits, clock sync), the host cgroup, liveness of the
 * VMM, the persisted state and destroy. Each driver's subclass drives its VMM (QMP, the
 * Firecracker API) to pause, resume, resize and save the VM.
 */
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import {
  DriverError,
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  errorMessage,
  type Logger,
  type SandboxId,
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
import type { Cgroup, CgroupLimits } from '../../os/cgroups.js'
import { SyscallError } from '../../os/native.js'
import { saveDiskImage } from '../../disks/saved-disk.js'
import {
  guestRequest,
  parseGuestFields,
  syncGuest,
  toGuestStats,
  type GuestChannel,
  type GuestStats,
} from './guest-ctl.js'
import { writeJsonFileAtomic } from '../persisted-sandbox.js'
import { snapshotDiskFile, type PersistedVmBase, type VmSandboxFiles } from './persisted-vm.js'
import { isHostProcessAlive, logTail, waitForExit, type HostProcess } from './vm-process.js'

/** How often an adopted VM (not our child, so no exit event) is checked for liveness. */
const adoptedPollMs = 1000
/** How often a running guest is asked whether it still answers, and how many misses end it. */
const watchdogIntervalMs = 15_000
const watchdogMisses = 3
/** How long the guest's init gives the agent to stop before it powers off anyway (its STOP_GRACE_MS). */
const guestStopGraceMs = 5000

/** The persisted state the shared sandbox code reads and rewrites. */
export type VmSandboxState = PersistedVmBase & { shape: { memoryMiB: number } }

export interface VmSandboxOptions<State extends VmSandboxState> {
  info: SandboxInfo
  cgroup: Cgroup
  state: State
  /** Present when this process started the VMM; absent when the VM was adopted. */
  child?: ChildProcess
  paused: boolean
  log: Logger
  /** Host memory the VMM itself may use on top of the guest's. */
  overheadMiB: number
  /** Deadline of a guest control request, ms (generous under TCG). */
  guestTimeoutMs: number
  /** The VM's network slot, when it has one. */
  network?: SandboxNetworkHandle
}

/** What the shared code needs to know of the VMM. */
export interface VmmBinding {
  /** For messages: `QEMU`, `Firecracker`. */
  name: string
  /** The VMM's process, as persisted. */
  process: HostProcess
  files: VmSandboxFiles
  /** Where the guest's control port is reached. */
  ctl: string | GuestChannel
}

/** The host cgroup's limits for a VM: the guest's memory plus the VMM's own. */
export function vmCgroupLimits(
  limits: SandboxLimits,
  overheadMiB: number,
  background = false,
): CgroupLimits {
  return {
    memoryBytes: (limits.memoryMiB + overheadMiB) * 1024 * 1024,
    cpus: limits.cpus,
    // The VMM's threads and one relay process per open agent connection.
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

/**
 * Removes everything a VM sandbox holds on the host; safe on partial leftovers. The network
 * slot goes last, once the VMM that sat in it is gone with the cgroup.
 */
export async function removeVmLeftovers(
  paths: { dir: string },
  cgroup: Cgroup,
  network?: SandboxNetworkHandle,
): Promise<void> {
  await cgroup.killAll()
  rmSync(paths.dir, { recursive: true, force: true })
  if (cgroup.exists()) {
    await cgroup.remove()
  }
  await releaseNetwork(network)
}

export abstract class VmSandbox<State extends VmSandboxState> implements Sandbox {
  readonly id: SandboxId
  readonly info: SandboxInfo
  readonly ended: Promise<DestroyReason>
  protected readonly cgroup: Cgroup
  protected readonly persisted: State
  protected readonly log: Logger
  protected readonly guestTimeoutMs: number
  #state: SandboxState
  readonly #vmm: VmmBinding
  readonly #overheadMiB: number
  readonly #network: SandboxNetworkHandle | undefined
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

  constructor(options: VmSandboxOptions<State>, vmm: VmmBinding) {
    this.id = options.info.id
    this.info = options.info
    this.cgroup = options.cgroup
    this.persisted = options.state
    this.log = options.log
    this.guestTimeoutMs = options.guestTimeoutMs
    this.#vmm = vmm
    this.#overheadMiB = options.overheadMiB
    this.#network = options.network
    this.#state = options.paused ? 'paused' : 'running'
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve
    })
    const onEnd = (exit: string): void => {
      if (this.#state === 'destroyed') {
        return
      }
      // With panic=-1 the kernel restarts right after the panic's stack dump, before its closing
      // line: the "Kernel panic" header can be dozens of lines up.
      this.#resolveEnded({ reason: endReason(logTail(vmm.files.log, 400), exit) })
    }
    if (options.child !== undefined) {
      options.child.once('exit', (code, signal) => onEnd(signal ?? `code ${code}`))
    } else {
      this.#poll = setInterval(() => {
        if (!isHostProcessAlive(vmm.process)) {
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

  /**
   * Stops the VM's vCPUs through the VMM. The VMM's cgroup is frozen after it and thawed before
   * `resumeVm`, so a paused VM uses no host CPU at all, whatever the VMM's own threads do.
   */
  protected abstract pauseVm(signal: AbortSignal | undefined): Promise<void>
  /** Lets a paused VM run again with the balloon at the sandbox's memory limit. */
  protected abstract resumeVm(signal: AbortSignal | undefined): Promise<void>
  /**
   * Applies new limits to the running VM: the balloon to `limits.memoryMiB` and, when
   * `growDisk`, the disk file and the VMM's view of it to `limits.diskMiB`.
   */
  protected abstract resizeVm(
    limits: SandboxLimits,
    growDisk: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void>
  /**
   * Saves devices, RAM and the disk into `dir`; the VM runs on afterwards unless `wasPaused`
   * (its cgroup is thawed meanwhile: the vCPUs stay stopped, the VMM answers).
   */
  protected abstract saveVm(
    dir: string,
    wasPaused: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void>
  /** Writes the manifest that lets a create start from the snapshot in `dir`. */
  protected abstract writeSnapshotManifest(dir: string): void

  /** A hung guest (the kernel wedged, PID 1 stuck) answers nothing: end it with a clear error. */
  #checkGuest(): void {
    if (this.#state !== 'running' || this.#busy > 0) {
      this.#misses = 0
      return
    }
    guestRequest(this.#vmm.ctl, 'ping', { timeoutMs: this.guestTimeoutMs })
      .then(() => {
        this.#misses = 0
      })
      .catch((err: unknown) => {
        if (this.#state !== 'running' || this.#busy > 0) {
          return
        }
        this.#misses++
        this.log.warn({ err: errorMessage(err), misses: this.#misses }, 'guest did not answer')
        if (this.#misses >= watchdogMisses) {
          this.#resolveEnded({
            reason: `the guest stopped answering (${this.#misses} checks over ${Math.round((watchdogIntervalMs * this.#misses) / 1000)} s): hung`,
            cause: err,
          })
        }
      })
  }

  connect(): AgentConnection {
    this.#connection ??= createAgentConnection(this.#vmm.files.agentSocket)
    return this.#connection
  }

  #persist(): void {
    writeJsonFileAtomic(this.#vmm.files.state, {
      ...this.persisted,
      paused: this.#state === 'paused',
      limits: this.info.limits,
      labels: this.info.labels,
      ...(this.#network === undefined ? {} : { network: persistSlot(this.#network.slot) }),
    })
  }

  /** Runs `work` with the watchdog standing aside (the guest may not answer meanwhile). */
  protected async withBusy<T>(work: () => Promise<T>): Promise<T> {
    this.#busy++
    try {
      return await work()
    } finally {
      this.#busy--
    }
  }

  async pause({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.withBusy(async () => {
      await this.pauseVm(signal)
      await this.cgroup.freeze(signal === undefined ? {} : { signal })
      this.#state = 'paused'
      this.#persist()
    })
  }

  async resume({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await this.withBusy(async () => {
      await this.cgroup.thaw(signal === undefined ? {} : { signal })
      await this.resumeVm(signal)
      this.#state = 'running'
      this.#persist()
    })
    // The guest's clock stood still while paused; limits set meanwhile reach it now.
    await syncGuest(this.#vmm.ctl, { timeoutMs: this.guestTimeoutMs })
    await guestRequest(this.#vmm.ctl, `pids ${this.info.limits.pids}`, {
      timeoutMs: this.guestTimeoutMs,
    })
  }

  async setLimits(limits: SandboxLimits, { signal }: { signal?: AbortSignal } = {}): Promise<void> {
    if (limits.memoryMiB > this.persisted.shape.memoryMiB) {
      throw new InvalidArgumentError(
        `memoryMiB must be at most ${this.persisted.shape.memoryMiB} for this VM (its RAM size)`,
      )
    }
    if (limits.diskMiB < this.info.limits.diskMiB) {
      throw new InvalidArgumentError(
        `the disk of a VM sandbox can grow but not shrink (${this.info.limits.diskMiB} MiB now)`,
      )
    }
    const growDisk = limits.diskMiB > this.info.limits.diskMiB
    if (growDisk && this.#state === 'paused') {
      throw new FailedPreconditionError('resume the sandbox before growing its disk')
    }
    // A hand-over: from here on the sandbox is in use, so it gets a normal CPU share.
    this.cgroup.setLimits(vmCgroupLimits(limits, this.#overheadMiB))
    if (this.#state === 'running') {
      await this.resizeVm(limits, growDisk, signal)
      await guestRequest(this.#vmm.ctl, `pids ${limits.pids}`, {
        timeoutMs: this.guestTimeoutMs,
      })
      if (growDisk) {
        await guestRequest(this.#vmm.ctl, `resize-disk ${limits.diskMiB * 1024 * 1024}`, {
          timeoutMs: this.guestTimeoutMs,
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

  async setNetwork(egress: EgressPolicy): Promise<void> {
    this.info.network = await changeNetwork(this.#network, this.id, egress)
    this.#persist()
  }

  async stats(): Promise<SandboxStats> {
    if (this.#state === 'destroyed') {
      throw new FailedPreconditionError(`sandbox ${this.id} is destroyed`)
    }
    const host = this.cgroup.stats()
    if (this.#state === 'running') {
      const answer = await guestRequest(this.#vmm.ctl, 'stats', {
        timeoutMs: this.guestTimeoutMs,
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

  async snapshot({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    const wasPaused = this.#state === 'paused'
    const started = performance.now()
    try {
      await this.withBusy(async () => {
        if (wasPaused) {
          await this.cgroup.thaw()
        }
        try {
          await this.saveVm(dir, wasPaused, signal)
        } finally {
          if (wasPaused) {
            await this.cgroup.freeze()
          }
        }
      })
      this.writeSnapshotManifest(dir)
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
      await syncGuest(this.#vmm.ctl, { timeoutMs: this.guestTimeoutMs })
    }
    this.log.debug({ durationMs: Math.round(performance.now() - started) }, 'sandbox snapshotted')
    return {
      driver: this.info.driver,
      template: this.info.template,
      diskMiB: this.info.limits.diskMiB,
      dir,
      memory: true,
    }
  }

  /**
   * The guest shuts down (its init ends every process and syncs the disk, then the VMM exits);
   * a paused guest runs again for that first. A guest that does not finish in time is killed,
   * its disk as a crash would leave it.
   */
  async shutDown({ dir, signal }: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    mkdirSync(dir, { mode: 0o700 })
    try {
      await this.withBusy(async () => {
        if (this.#state === 'paused') {
          await this.cgroup.thaw(signal === undefined ? {} : { signal })
          await this.resumeVm(signal)
          this.#state = 'running'
        }
        await guestRequest(this.#vmm.ctl, 'shutdown', { timeoutMs: this.guestTimeoutMs })
        const { process, name } = this.#vmm
        if (!(await waitForExit(process, guestStopGraceMs + this.guestTimeoutMs, 20))) {
          this.log.warn({ pid: process.pid }, `${name} did not stop after a guest shutdown`)
          await this.cgroup.killAll()
        }
      })
      saveDiskImage(this.#vmm.files.disk, join(dir, snapshotDiskFile), this.id)
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw err
    } finally {
      await this.destroy({ reason: 'shut down, its disk kept' })
    }
    return {
      driver: this.info.driver,
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
      clearInterval(this.#watchdog)
      this.#connection?.close()
      const started = performance.now()
      await removeVmLeftovers(this.#vmm.files, this.cgroup, this.#network)
      const { name, process } = this.#vmm
      const { pid } = process
      if (!(await waitForExit(process, 2000, 5))) {
        this.log.warn({ pid }, `${name} still present after destroy`)
        throw new DriverError(`${name} (pid ${pid}) survived the destroy of ${this.id}`)
      }
      this.log.debug({ durationMs: Math.round(performance.now() - started) }, 'sandbox removed')
      this.#resolveEnded(reason)
    })()
    return this.#destroyed
  }
}
