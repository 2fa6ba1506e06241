/**
 * The microVM driver on Firecracker (KVM only), configured through its HTTP API: the same
 * guest as the qemu driver (Debian's cloud kernel, sandcell-init, the template and sandcell
 * images, a per-VM writable disk), the agent reached over a TAP device that exists only in the
 * VM's own network namespace, the guest's control port over vsock. Creates load a snapshot of
 * the template booted once, its memory file mapped privately by every clone.
 *
 * Untested against a real Firecracker on the machine this was written on (its /dev/kvm cannot
 * run a stock kernel); its API client is tested against a fake of the API socket.
 */
import { execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import {
  CleanupStack,
  DriverError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  Semaphore,
  delay,
  errorMessage,
  newSandboxId,
  type Logger,
  type SandboxId,
} from '@sandcell/shared'
import type {
  Driver,
  ProbeResult,
  Sandbox,
  SandboxInfo,
  SandboxLimits,
  SandboxSpec,
  TemplateProgress,
  TemplateStatus,
} from '../../driver.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import {
  createCgroup,
  detectCgroupVersion,
  openCgroup,
  removeCgroupParent,
  type Cgroup,
  type CgroupVersion,
} from '../../os/cgroups.js'
import { resolveHostNode } from '../../os/host-node.js'
import { sparseCopy } from '../../os/native.js'
import { isProcessAlive } from '../../os/processes.js'
import { SandboxEvents, type SandboxListener } from '../../sandbox-events.js'
import {
  TemplateRegistry,
  assertTemplateExists,
  templateStatuses,
} from '../../templates/template-registry.js'
import { validateLimits } from '../container/limits.js'
import { ensureBlankImage } from '../container/writable-disk.js'
import {
  ensureArtifact,
  ensureGuestKernel,
  ensureInitramfs,
  ensureSandcellImage,
  ensureTemplateImage,
  hashParts,
  type BuildContext,
} from '../qemu/guest-image.js'
import { guestRequest } from '../qemu/guest-ctl.js'
import { removeVmLeftovers, vmCgroupLimits } from '../qemu/qemu-sandbox.js'
import { syncGuest } from '../qemu/vm-control.js'
import {
  logTail,
  startAgentRelay,
  startVmm,
  waitForAgent,
  type HostProcess,
  type StartedVmm,
} from '../qemu/vm-process.js'
import { FirecrackerApi } from './firecracker-api.js'
import { FirecrackerSandbox, ctlChannel } from './firecracker-sandbox.js'
import {
  agentTarget,
  configureAndBoot,
  firecrackerBootArgs,
  firecrackerVmPaths,
  listFirecrackerVmDirs,
  readFirecrackerManifest,
  readFirecrackerState,
  snapshotFiles,
  tapSetup,
  vmFiles,
  writeFirecrackerState,
  type FirecrackerShape,
  type FirecrackerVmPaths,
  type PersistedFirecrackerState,
} from './firecracker-vm.js'

export interface FirecrackerDriverOptions {
  /** Root of what the driver keeps: sandboxes and disks under `<dataDir>/firecracker`. */
  dataDir: string
  log: Logger
  /** The `firecracker` binary. */
  firecrackerBinary: string
  /** @default `<dataDir>/templates` */
  templatesDir?: string
  /** Kernel, initramfs and images, shared with the qemu driver. @default `<dataDir>/qemu/images` */
  imagesDir?: string
  agentDir?: string
  /** @default 100000 */
  uidBase?: number
  /** @default 'sandcell-vm' */
  cgroupParent?: string
  /** @default 15000 */
  readyTimeoutMs?: number
  /** Guest RAM of every VM, MiB. @default 1024 */
  vmMemoryMiB?: number
  /** @default the host's cores (Firecracker takes 1 or an even count) */
  vcpus?: number
  /** @default the number of CPU cores */
  maxConcurrentCreates?: number
}

const templateSnapshotVersion = 1
const templateDiskMiB = 64
const templateMemoryMiB = 256
const minVmMemoryMiB = 128
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

function defaultAgentDir(): string {
  const require = createRequire(import.meta.url)
  return join(dirname(require.resolve('@sandcell/agent/package.json')), 'bundle')
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
  readonly #log: Logger
  readonly #binary: string
  readonly #sandboxesDir: string
  readonly #disksDir: string
  readonly #imagesDir: string
  readonly #templatesDir: string
  readonly #agentDir: string
  readonly #uidBase: number
  readonly #cgroupParent: string
  readonly #readyTimeoutMs: number
  readonly #vmMemoryMiB: number
  readonly #vcpus: number
  readonly #templates: TemplateRegistry
  readonly #launches: Semaphore
  readonly #templateVms = new Map<string, Promise<{ shape: FirecrackerShape; dir: string }>>()
  #setup: Promise<Setup> | undefined

  constructor(options: FirecrackerDriverOptions) {
    this.#log = options.log.child({ component: 'runtime.firecracker' })
    this.events = new SandboxEvents(this.#log)
    this.#binary = options.firecrackerBinary
    this.#sandboxesDir = join(options.dataDir, 'firecracker', 'sandboxes')
    this.#disksDir = join(options.dataDir, 'firecracker', 'disks')
    this.#imagesDir = options.imagesDir ?? join(options.dataDir, 'qemu', 'images')
    this.#templatesDir = options.templatesDir ?? join(options.dataDir, 'templates')
    this.#agentDir = options.agentDir ?? defaultAgentDir()
    this.#uidBase = options.uidBase ?? 100_000
    this.#cgroupParent = options.cgroupParent ?? 'sandcell-vm'
    this.#readyTimeoutMs = options.readyTimeoutMs ?? 15_000
    this.#vmMemoryMiB = options.vmMemoryMiB ?? 1024
    this.#vcpus = firecrackerVcpus(options.vcpus ?? availableParallelism())
    this.#launches = new Semaphore(options.maxConcurrentCreates ?? availableParallelism())
    this.#templates = new TemplateRegistry({
      templatesDir: this.#templatesDir,
      uidOffset: this.#uidBase,
      log: this.#log,
    })
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
    const path = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`.split(':')
    for (const [tool, pkg] of [
      ['socat', 'socat'],
      ['mkfs.erofs', 'erofs-utils'],
      ['ip', 'iproute2'],
      ['unshare', 'util-linux'],
      ['nsenter', 'util-linux'],
      ['lz4', 'lz4'],
      ['gcc', 'build-essential'],
    ] as const) {
      if (!path.some((dir) => dir.length > 0 && existsSync(join(dir, tool)))) {
        problems.push(`${tool} is missing: apt-get install ${pkg}`)
      }
    }
    const result: ProbeResult = { usable: problems.length === 0, details }
    if (problems.length > 0) {
      result.reason = problems.join('; ')
    }
    return Promise.resolve(result)
  }

  templates(): Promise<TemplateStatus[]> {
    return Promise.resolve(templateStatuses(this.#templatesDir))
  }

  #ensureSetup(context: Partial<BuildContext> = {}): Promise<Setup> {
    this.#setup ??= (async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(`the firecracker driver cannot run here: ${probe.reason ?? ''}`)
      }
      for (const dir of [this.#sandboxesDir, this.#disksDir, this.#imagesDir]) {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      }
      const build: BuildContext = { imagesDir: this.#imagesDir, log: this.#log, ...context }
      const hostNode = await resolveHostNode(
        [
          join(this.#agentDir, 'node_modules/node-pty/build/Release/pty.node'),
          join(this.#agentDir, 'native/sandcell_spawn.node'),
        ].filter((addon) => existsSync(addon)),
      )
      const kernel = await ensureGuestKernel(build)
      return {
        cgroupVersion: detectCgroupVersion(),
        version: this.#version(),
        kernel: kernel.vmlinux,
        initramfs: await ensureInitramfs(build, kernel),
        sandcellImage: await ensureSandcellImage(build, hostNode, this.#agentDir),
      }
    })()
    this.#setup.catch(() => {
      this.#setup = undefined
    })
    return this.#setup
  }

  /** The template's shape and the snapshot of it booted once. */
  #templateVm(
    template: string,
    context: Partial<BuildContext> = {},
  ): Promise<{ shape: FirecrackerShape; dir: string }> {
    let pending = this.#templateVms.get(template)
    if (pending === undefined) {
      pending = (async () => {
        const setup = await this.#ensureSetup(context)
        const prepared = await this.#templates.prepare(template, {
          ...(context.signal === undefined ? {} : { signal: context.signal }),
          ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
        })
        const rootfsImage = await ensureTemplateImage(
          { imagesDir: this.#imagesDir, log: this.#log, ...context },
          {
            name: template,
            rootfsDir: prepared.rootfsDir,
            uidOffset: this.#uidBase,
            withBusybox: prepared.hostBinds.length > 0,
          },
        )
        const shape: FirecrackerShape = {
          vcpus: this.#vcpus,
          memoryMiB: this.#vmMemoryMiB,
          kernel: setup.kernel,
          initramfs: setup.initramfs,
          rootfsImage,
          sandcellImage: setup.sandcellImage,
        }
        const dir = await this.#ensureTemplateSnapshot(template, shape, setup, context)
        return { shape, dir }
      })()
      this.#templateVms.set(template, pending)
      pending.catch(() => this.#templateVms.delete(template))
    }
    return pending
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
    const build: BuildContext = { imagesDir: this.#imagesDir, log: this.#log, ...context }
    return ensureArtifact(join(this.#imagesDir, 'snapshots'), key, build, async (work) => {
      build.onProgress?.({ phase: 'template-snapshot', done: 0, total: 0, message: template })
      const id = `template-${randomBytes(4).toString('hex')}`
      const paths = firecrackerVmPaths(work, 'vm')
      const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
      try {
        cgroup.setLimits(
          vmCgroupLimits(
            { memoryMiB: shape.memoryMiB, cpus: availableParallelism(), pids: 1024, diskMiB: 0 },
            overheadMiB,
          ),
        )
        this.#prepareDir(paths, shape)
        sparseCopy(await ensureBlankImage(this.#disksDir, templateDiskMiB, 0), paths.disk)
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
      } finally {
        await cgroup.killAll().catch(() => undefined)
        if (cgroup.exists()) {
          await cgroup.remove().catch(() => undefined)
        }
        rmSync(paths.dir, { recursive: true, force: true })
      }
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
    options: { memoryMiB: number; signal?: AbortSignal },
  ): Promise<{ vmm: StartedVmm; relay: HostProcess }> {
    const vmm = await startVmm({
      name: 'Firecracker',
      binary: this.#binary,
      args: ['--api-sock', paths.apiSocket],
      cgroup,
      logPath: paths.log,
      apiSocket: paths.apiSocket,
      netnsSetup: tapSetup,
      cwd: paths.dir,
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

  #validate(limits: SandboxLimits): void {
    validateLimits(limits)
    if (limits.memoryMiB < minVmMemoryMiB || limits.memoryMiB > this.#vmMemoryMiB) {
      throw new InvalidArgumentError(
        `impossible limits: memoryMiB must be between ${minVmMemoryMiB} and ${this.#vmMemoryMiB} MiB for a VM (got ${limits.memoryMiB})`,
        { details: { limits } },
      )
    }
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const snapshot = requested.fromSnapshot
    if (snapshot !== undefined && snapshot.driver !== 'firecracker') {
      throw new InvalidArgumentError(
        `a ${snapshot.driver} snapshot cannot start a firecracker sandbox; use the ${snapshot.driver} driver`,
      )
    }
    const spec: SandboxSpec =
      snapshot === undefined
        ? requested
        : {
            ...requested,
            template: snapshot.template,
            limits: { ...requested.limits, diskMiB: snapshot.diskMiB },
          }
    assertTemplateExists(spec.template)
    this.#validate(spec.limits)
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
    return this.#launches.run(
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
    const paths = firecrackerVmPaths(this.#sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
    const undo = new CleanupStack()
    undo.defer('sandbox leftovers', () => removeVmLeftovers(paths, cgroup))
    const { limits } = spec
    try {
      this.#prepareDir(paths, shape)
      cgroup.setLimits(vmCgroupLimits(limits, overheadMiB, spec.background === true))
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
        { memoryMiB: limits.memoryMiB, ...options },
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
      const info: SandboxInfo = {
        id,
        driver: 'firecracker',
        template: spec.template,
        limits: { ...limits },
        labels: { ...spec.labels },
        createdAt: new Date(),
        agentSocket: paths.agentSocket,
      }
      const state: PersistedFirecrackerState = {
        version: 1,
        id,
        template: spec.template,
        limits: info.limits,
        labels: info.labels,
        createdAt: info.createdAt.toISOString(),
        paused: false,
        firecracker: { pid: vmm.pid, startTime: vmm.startTime },
        relay,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#cgroupParent,
        shape,
      }
      writeFirecrackerState(paths, state)
      undo.release()
      const sandbox = guardSandbox(
        this.#sandbox({ info, paths, cgroup, state, child: vmm.child, paused: false, log }),
        { log: this.#log, events: this.events },
      )
      const durationMs = Math.round(performance.now() - started)
      log.info({ template: spec.template, durationMs }, 'sandbox created')
      this.events.emit({ type: 'created', sandbox, durationMs })
      return sandbox
    } catch (err) {
      const tail = logTail(paths.log, 15)
      await undo.dispose().catch((cleanupErr: unknown) => {
        log.error({ err: cleanupErr }, 'cleanup after a failed create left something behind')
      })
      throw err instanceof DriverError && tail.length > 0
        ? new DriverError(`${err.message}\n${tail}`, { cause: err })
        : err
    }
  }

  #sandbox(options: {
    info: SandboxInfo
    paths: FirecrackerVmPaths
    cgroup: Cgroup
    state: PersistedFirecrackerState
    child?: ChildProcess
    paused: boolean
    log: Logger
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
    const cgroupVersion = detectCgroupVersion()
    const adopted: Sandbox[] = []
    for (const id of listFirecrackerVmDirs(this.#sandboxesDir)) {
      const paths = firecrackerVmPaths(this.#sandboxesDir, id)
      const state = readFirecrackerState(paths)
      const cgroup = openCgroup({
        version: state?.cgroupVersion ?? cgroupVersion,
        parent: state?.cgroupParent ?? this.#cgroupParent,
        id,
      })
      const log = this.#log.child({ sandboxId: id })
      if (
        state === undefined ||
        !isProcessAlive(state.firecracker.pid, state.firecracker.startTime)
      ) {
        log.info('cleaning up the leftovers of a dead Firecracker sandbox')
        await removeVmLeftovers(paths, cgroup).catch((err: unknown) =>
          log.error({ err }, 'could not clean up a dead Firecracker sandbox'),
        )
        continue
      }
      if (!isProcessAlive(state.relay.pid, state.relay.startTime)) {
        state.relay = await startAgentRelay({
          vmmPid: state.firecracker.pid,
          agentSocket: paths.agentSocket,
          cgroup,
          logPath: paths.log,
          target: agentTarget,
        })
        writeFirecrackerState(paths, state)
      }
      const info: SandboxInfo = {
        id,
        driver: 'firecracker',
        template: state.template,
        limits: state.limits,
        labels: state.labels,
        createdAt: new Date(state.createdAt),
        agentSocket: paths.agentSocket,
      }
      const sandbox = guardSandbox(
        this.#sandbox({ info, paths, cgroup, state, paused: state.paused, log }),
        { log: this.#log, events: this.events },
      )
      adopted.push(sandbox)
      this.events.emit({ type: 'adopted', sandbox })
    }
    return adopted
  }

  close(): Promise<void> {
    try {
      removeCgroupParent(detectCgroupVersion(), this.#cgroupParent)
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
