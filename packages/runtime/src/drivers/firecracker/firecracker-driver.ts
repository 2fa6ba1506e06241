/**
 * The microVM driver on Firecracker (KVM only), configured through its HTTP API: the same
 * guest as the qemu driver (Debian's cloud kernel, sandcell-init, the template and sandcell
 * images, a per-VM writable disk), the agent reached over the TAP in the VM's network namespace
 * (a network slot's, or a private one with no way out), the guest's control port over vsock.
 * Creates load a snapshot of the template booted once, its memory file mapped privately by
 * every clone.
 *
 * Untested against a real Firecracker on the machine this was written on (its /dev/kvm cannot
 * run a stock kernel); its API client is tested against a fake of the API socket.
 */
import { execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, renameSync, statSync, symlinkSync, truncateSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import {
  DriverError,
  FailedPreconditionError,
  NotFoundError,
  delay,
  errorMessage,
  newSandboxId,
  type Logger,
  type SandboxId,
  isProcessAlive,
} from '@sandcell/shared'
import type {
  Driver,
  ProbeResult,
  Sandbox,
  SandboxInfo,
  SandboxSpec,
  TemplateProgress,
  TemplateStatus,
} from '../../driver.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import { acquireNetwork, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
import {
  createCgroup,
  detectCgroupVersion,
  removeCgroupParent,
  type Cgroup,
  type CgroupVersion,
} from '../../os/cgroups.js'
import { sparseCopy } from '../../os/native.js'
import { SandboxEvents, type SandboxListener } from '../../sandbox-events.js'
import { assertTemplateExists, templateStatuses } from '../../templates/template-registry.js'
import { ensureBlankImage } from '../../disks/blank-image.js'
import { adoptVmSandboxes } from '../microvm/adopt-vms.js'
import { guestRequest, syncGuest } from '../microvm/guest-ctl.js'
import { ensureArtifact, hashParts, type BuildContext } from '../microvm/guest-image.js'
import {
  ensureGuestBase,
  ensureTemplateRootfs,
  missingTools,
  toProbeResult,
} from '../microvm/guest-setup.js'
import {
  resolveMicroVmSettings,
  specFromSnapshot,
  validateVmLimits,
  type MicroVmDriverOptions,
  type MicroVmSettings,
} from '../microvm/microvm-settings.js'
import { adoptedVmInfo, newVmRecord } from '../microvm/persisted-vm.js'
import { PromiseCache } from '../microvm/promise-cache.js'
import { undoneOnFailure, withTemplateVmCgroup } from '../microvm/vm-launch.js'
import {
  startAgentRelay,
  startVmm,
  waitForAgent,
  type HostProcess,
  type StartedVmm,
} from '../microvm/vm-process.js'
import { vmCgroupLimits } from '../microvm/vm-sandbox.js'
import { FirecrackerApi } from './firecracker-api.js'
import { FirecrackerSandbox, ctlChannel } from './firecracker-sandbox.js'
import {
  agentTarget,
  configureAndBoot,
  firecrackerBootArgs,
  firecrackerVmPaths,
  readFirecrackerManifest,
  readFirecrackerState,
  snapshotFiles,
  vmFiles,
  writeFirecrackerState,
  type FirecrackerShape,
  type FirecrackerVmPaths,
  type PersistedFirecrackerState,
} from './firecracker-vm.js'

export interface FirecrackerDriverOptions extends MicroVmDriverOptions {
  /** The `firecracker` binary. */
  firecrackerBinary: string
  /** @default 'sandcell-vm' */
  cgroupParent?: string
  /** @default 15000 */
  readyTimeoutMs?: number
  /** @default the host's cores (Firecracker takes 1 or an even count) */
  vcpus?: number
}

const templateSnapshotVersion = 1
const templateDiskMiB = 64
const templateMemoryMiB = 256
/** Firecracker's own memory is small (≤ 5 MiB by its specification) plus page tables. */
const overheadMiB = 32

/** Where a new VM's state comes from. */
type VmSource = { kind: 'boot' } | { kind: 'snapshot'; dir: string }

interface Setup {
  cgroupVersion: CgroupVersion
  version: string
  kernel: string
  initramfs: string
  sandcellImage: string
}

/** Firecracker accepts 1 or an even number of vCPUs. */
function firecrackerVcpus(wanted: number): number {
  return wanted <= 1 ? 1 : wanted - (wanted % 2)
}

export function createFirecrackerDriver(options: FirecrackerDriverOptions): FirecrackerDriver {
  return new FirecrackerDriver(options)
}

export class FirecrackerDriver implements Driver {
  readonly kind = 'firecracker' as const
  readonly events: SandboxEvents
  readonly #vm: MicroVmSettings
  readonly #log: Logger
  readonly #binary: string
  readonly #readyTimeoutMs: number
  readonly #vcpus: number
  readonly #templateVms = new PromiseCache<string, { shape: FirecrackerShape; dir: string }>()
  readonly #setup = new PromiseCache<'host', Setup>()

  constructor(options: FirecrackerDriverOptions) {
    this.#vm = resolveMicroVmSettings('firecracker', options, { cgroupParent: 'sandcell-vm' })
    this.#log = this.#vm.log
    this.events = new SandboxEvents(this.#log)
    this.#binary = options.firecrackerBinary
    this.#readyTimeoutMs = options.readyTimeoutMs ?? 15_000
    this.#vcpus = firecrackerVcpus(options.vcpus ?? availableParallelism())
  }

  onEvent(listener: SandboxListener): () => void {
    return this.events.on(listener)
  }

  #version(): string {
    return execFileSync(this.#binary, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? ''
  }

  probe(): Promise<ProbeResult> {
    const details: Record<string, string> = {}
    const problems: string[] = []
    try {
      details.firecracker = this.#version()
    } catch {
      problems.push(`${this.#binary} does not run: install Firecracker and configure its path`)
    }
    if (process.getuid?.() !== 0) {
      problems.push('the firecracker driver must run as root (cgroups, network namespaces)')
    }
    if (!existsSync('/dev/kvm')) {
      problems.push('Firecracker needs KVM and this host has no /dev/kvm')
    }
    try {
      details.cgroup = `v${detectCgroupVersion()}`
    } catch (err) {
      problems.push(errorMessage(err))
    }
    problems.push(
      ...missingTools([
        ['socat', 'socat'],
        ['mkfs.erofs', 'erofs-utils'],
        ['ip', 'iproute2'],
        ['unshare', 'util-linux'],
        ['nsenter', 'util-linux'],
        ['lz4', 'lz4'],
        ['gcc', 'build-essential'],
      ]),
    )
    return Promise.resolve(toProbeResult(problems, details))
  }

  templates(): Promise<TemplateStatus[]> {
    return Promise.resolve(templateStatuses(this.#vm.templatesDir))
  }

  #ensureSetup(context: Partial<BuildContext> = {}): Promise<Setup> {
    return this.#setup.get('host', async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(`the firecracker driver cannot run here: ${probe.reason ?? ''}`)
      }
      for (const dir of [this.#vm.sandboxesDir, this.#vm.disksDir, this.#vm.imagesDir]) {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      }
      const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
      const { kernel, initramfs, sandcellImage } = await ensureGuestBase(build, this.#vm.agentDir)
      return {
        cgroupVersion: detectCgroupVersion(),
        version: this.#version(),
        kernel: kernel.vmlinux,
        initramfs,
        sandcellImage,
      }
    })
  }

  /** The template's shape and the snapshot of it booted once. */
  #templateVm(
    template: string,
    context: Partial<BuildContext> = {},
  ): Promise<{ shape: FirecrackerShape; dir: string }> {
    return this.#templateVms.get(template, async () => {
      const setup = await this.#ensureSetup(context)
      const rootfsImage = await ensureTemplateRootfs(this.#vm, template, context)
      const shape: FirecrackerShape = {
        vcpus: this.#vcpus,
        memoryMiB: this.#vm.vmMemoryMiB,
        kernel: setup.kernel,
        initramfs: setup.initramfs,
        rootfsImage,
        sandcellImage: setup.sandcellImage,
      }
      const dir = await this.#ensureTemplateSnapshot(template, shape, setup, context)
      return { shape, dir }
    })
  }

  async prepareTemplate(
    name: string,
    options: { signal?: AbortSignal; onProgress?: (progress: TemplateProgress) => void } = {},
  ): Promise<void> {
    assertTemplateExists(name)
    await this.#templateVm(name, options)
  }

  /** Boots the template once, shrinks it to the template memory and saves a full snapshot. */
  #ensureTemplateSnapshot(
    template: string,
    shape: FirecrackerShape,
    setup: Setup,
    context: Partial<BuildContext>,
  ): Promise<string> {
    const key = `fc-${template}-${hashParts([templateSnapshotVersion, setup.version, shape])}`
    const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
    return ensureArtifact(join(this.#vm.imagesDir, 'snapshots'), key, build, async (work) => {
      build.onProgress?.({ phase: 'template-snapshot', done: 0, total: 0, message: template })
      const paths = firecrackerVmPaths(work, 'vm')
      const scratch = {
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        memoryMiB: shape.memoryMiB,
        overheadMiB,
        dir: paths.dir,
      }
      await withTemplateVmCgroup(scratch, async (cgroup) => {
        this.#prepareDir(paths, shape)
        sparseCopy(await ensureBlankImage(this.#vm.disksDir, templateDiskMiB, 0), paths.disk)
        const { vmm } = await this.#start(paths, shape, cgroup, { kind: 'boot' }, 1024, {
          memoryMiB: templateMemoryMiB,
          ...(context.signal === undefined ? {} : { signal: context.signal }),
        })
        const api = new FirecrackerApi(paths.apiSocket, { timeoutMs: 300_000 })
        try {
          await api.pause()
          await api.createSnapshot({
            snapshot_path: join(work, snapshotFiles.state),
            mem_file_path: join(work, snapshotFiles.memory),
            snapshot_type: 'Full',
          })
        } finally {
          await api.close()
        }
        process.kill(vmm.pid, 'SIGKILL')
        await waitGone(vmm)
        renameSync(paths.disk, join(work, snapshotFiles.disk))
      })
    })
  }

  /** The VM directory with the links its relative drive paths resolve through. */
  #prepareDir(paths: FirecrackerVmPaths, shape: FirecrackerShape): void {
    mkdirSync(paths.dir, { recursive: true, mode: 0o700 })
    symlinkSync(shape.rootfsImage, join(paths.dir, vmFiles.rootfs))
    symlinkSync(shape.sandcellImage, join(paths.dir, vmFiles.sandcell))
  }

  /** Starts Firecracker, boots or loads the VM, starts the relay and waits for the agent. */
  async #start(
    paths: FirecrackerVmPaths,
    shape: FirecrackerShape,
    cgroup: Cgroup,
    source: VmSource,
    pids: number,
    options: { memoryMiB: number; signal?: AbortSignal; netnsPath?: string | undefined },
  ): Promise<{ vmm: StartedVmm; relay: HostProcess }> {
    const vmm = await startVmm({
      name: 'Firecracker',
      binary: this.#binary,
      args: ['--api-sock', paths.apiSocket],
      cgroup,
      logPath: paths.log,
      apiSocket: paths.apiSocket,
      cwd: paths.dir,
      ...(options.netnsPath === undefined ? {} : { netnsPath: options.netnsPath }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    })
    const api = new FirecrackerApi(paths.apiSocket, { timeoutMs: this.#readyTimeoutMs })
    try {
      if (source.kind === 'boot') {
        await configureAndBoot(api, {
          shape,
          memoryMiB: options.memoryMiB,
          bootArgs: firecrackerBootArgs({
            clockNs: BigInt(Date.now()) * 1_000_000n,
            seedHex: randomBytes(32).toString('hex'),
            pids,
          }),
        })
      } else {
        await api.loadSnapshot({
          snapshot_path: join(source.dir, snapshotFiles.state),
          mem_backend: {
            backend_type: 'File',
            backend_path: join(source.dir, snapshotFiles.memory),
          },
          resume_vm: true,
        })
      }
    } finally {
      await api.close()
    }
    const relay = await startAgentRelay({
      vmmPid: vmm.pid,
      agentSocket: paths.agentSocket,
      cgroup,
      logPath: paths.log,
      target: agentTarget,
    })
    await waitForAgent({
      agentSocket: paths.agentSocket,
      vmm,
      logPath: paths.log,
      timeoutMs: this.#readyTimeoutMs * (source.kind === 'boot' ? 3 : 1),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    })
    return { vmm, relay }
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const spec = specFromSnapshot(requested, 'firecracker')
    const snapshot = spec.fromSnapshot
    assertTemplateExists(spec.template)
    validateVmLimits(spec.limits, this.#vm.vmMemoryMiB)
    const started = performance.now()
    const setup = await this.#ensureSetup()
    let shape: FirecrackerShape
    let sourceDir: string
    if (snapshot !== undefined) {
      const manifest = readFirecrackerManifest(snapshot.dir)
      if (manifest === undefined) {
        throw new NotFoundError(`snapshot files are missing in ${snapshot.dir}`)
      }
      if (manifest.firecrackerVersion !== setup.version) {
        throw new FailedPreconditionError(
          `snapshot ${snapshot.dir} was saved by ${manifest.firecrackerVersion}, not ${setup.version}`,
        )
      }
      shape = manifest.shape
      sourceDir = snapshot.dir
    } else {
      const vm = await this.#templateVm(
        spec.template,
        options.signal === undefined ? {} : { signal: options.signal },
      )
      shape = vm.shape
      sourceDir = vm.dir
    }
    return this.#vm.launches.run(
      () => this.#launch(spec, setup, shape, sourceDir, started, options),
      options.signal,
    )
  }

  async #launch(
    spec: SandboxSpec,
    setup: Setup,
    shape: FirecrackerShape,
    sourceDir: string,
    started: number,
    options: { signal?: AbortSignal },
  ): Promise<Sandbox> {
    const id: SandboxId = spec.id ?? newSandboxId()
    const log = this.#log.child({ sandboxId: id })
    const paths = firecrackerVmPaths(this.#vm.sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#vm.cgroupParent, id })
    const { limits } = spec
    const held: { network?: SandboxNetworkHandle } = {}
    const { info, state, child } = await undoneOnFailure({ paths, cgroup, log, held }, async () => {
      this.#prepareDir(paths, shape)
      cgroup.setLimits(vmCgroupLimits(limits, overheadMiB, spec.background === true))
      const network = await acquireNetwork(this.#vm.network, 'vm', spec, id)
      held.network = network
      sparseCopy(join(sourceDir, snapshotFiles.disk), paths.disk)
      const diskBytes = limits.diskMiB * 1024 * 1024
      const grow = statSync(paths.disk).size < diskBytes
      if (grow) {
        truncateSync(paths.disk, diskBytes)
      }
      const { vmm, relay } = await this.#start(
        paths,
        shape,
        cgroup,
        { kind: 'snapshot', dir: sourceDir },
        limits.pids,
        { memoryMiB: limits.memoryMiB, netnsPath: network?.slot.addresses.netnsPath, ...options },
      )
      const ctl = ctlChannel(paths)
      const timeoutMs = this.#readyTimeoutMs
      const api = new FirecrackerApi(paths.apiSocket)
      try {
        await api.patchBalloon(Math.max(0, shape.memoryMiB - limits.memoryMiB))
        if (grow) {
          await api.patchDrive('disk', vmFiles.disk)
        }
      } finally {
        await api.close()
      }
      await syncGuest(ctl, { timeoutMs })
      await guestRequest(ctl, `pids ${limits.pids}`, { timeoutMs })
      if (grow) {
        await guestRequest(ctl, `resize-disk ${diskBytes}`, { timeoutMs })
      }
      const record = newVmRecord({
        id,
        driver: 'firecracker',
        spec,
        agentSocket: paths.agentSocket,
        relay,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        network,
      })
      const state: PersistedFirecrackerState = {
        ...record.state,
        firecracker: { pid: vmm.pid, startTime: vmm.startTime },
        shape,
      }
      writeFirecrackerState(paths, state)
      return { info: record.info, state, child: vmm.child }
    })
    const sandbox = guardSandbox(
      this.#sandbox({
        info,
        paths,
        cgroup,
        state,
        child,
        paused: false,
        log,
        ...(held.network === undefined ? {} : { network: held.network }),
      }),
      { log: this.#log, events: this.events },
    )
    const durationMs = Math.round(performance.now() - started)
    log.info({ template: spec.template, durationMs }, 'sandbox created')
    this.events.emit({ type: 'created', sandbox, durationMs })
    return sandbox
  }

  #sandbox(options: {
    info: SandboxInfo
    paths: FirecrackerVmPaths
    cgroup: Cgroup
    state: PersistedFirecrackerState
    child?: ChildProcess
    paused: boolean
    log: Logger
    network?: SandboxNetworkHandle
  }): FirecrackerSandbox {
    return new FirecrackerSandbox({
      ...options,
      firecrackerVersion: this.#safeVersion(),
      overheadMiB,
      guestTimeoutMs: this.#readyTimeoutMs,
    })
  }

  #safeVersion(): string {
    try {
      return this.#version()
    } catch {
      return 'unknown'
    }
  }

  async adopt(): Promise<Sandbox[]> {
    const { adopted } = await adoptVmSandboxes({
      sandboxesDir: this.#vm.sandboxesDir,
      cgroupParent: this.#vm.cgroupParent,
      log: this.#log,
      events: this.events,
      network: this.#vm.network,
      what: 'Firecracker',
      paths: firecrackerVmPaths,
      readState: readFirecrackerState,
      vmmProcess: (state) => state.firecracker,
      // A paused Firecracker VM is paused through its API, not frozen: the relay starts as is.
      restartRelay: async ({ paths, state, cgroup }) => {
        state.relay = await startAgentRelay({
          vmmPid: state.firecracker.pid,
          agentSocket: paths.agentSocket,
          cgroup,
          logPath: paths.log,
          target: agentTarget,
        })
        writeFirecrackerState(paths, state)
      },
      sandbox: ({ id, paths, state, cgroup, log, network }) =>
        this.#sandbox({
          info: adoptedVmInfo(id, 'firecracker', state, paths.agentSocket, network),
          paths,
          cgroup,
          state,
          paused: state.paused,
          log,
          ...(network === undefined ? {} : { network }),
        }),
    })
    return adopted
  }

  close(): Promise<void> {
    try {
      removeCgroupParent(detectCgroupVersion(), this.#vm.cgroupParent)
    } catch {
      // No cgroups here: nothing was created.
    }
    return Promise.resolve()
  }
}

/** Waits (at most a second) for a killed process to be gone. */
async function waitGone(process: HostProcess): Promise<void> {
  for (let i = 0; i < 200 && isProcessAlive(process.pid, process.startTime); i++) {
    await delay(5)
  }
}
