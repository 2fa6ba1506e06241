/**
 * The microVM driver on QEMU's `microvm` machine (KVM when it can run the guest, TCG otherwise):
 * Debian's cloud kernel, sandcell-init as PID 1, the template as a read-only image under a
 * per-VM writable disk, the agent reached through QEMU's user network and a Unix-socket relay.
 * Creates restore a snapshot of the template booted once (RAM shared copy-on-write from one
 * file, `x-ignore-shared`), which is what makes them fast under TCG. VMs are detached from this
 * process so that a later one can adopt or clean them.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  accessSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { availableParallelism, release } from 'node:os'
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
import { createAgentConnection } from '../../agent-connection.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import { runCommand } from '../../run-command.js'
import {
  createCgroup,
  detectCgroupVersion,
  listCgroups,
  openCgroup,
  removeCgroupParent,
  type Cgroup,
  type CgroupVersion,
} from '../../os/cgroups.js'
import { resolveHostNode, type HostNode } from '../../os/host-node.js'
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
} from './guest-image.js'
import { guestRequest, isSilentGuest } from './guest-ctl.js'
import {
  buildKernelCmdline,
  buildQemuArgs,
  parseTscKhz,
  type Accelerator,
  type VmMemory,
  type VmShape,
} from './qemu-args.js'
import { QemuSandbox, removeVmLeftovers, vmCgroupLimits } from './qemu-sandbox.js'
import { withQmp } from './qmp-client.js'
import { loadVmState, saveVmState, setBalloon, syncGuest, waitForBalloon } from './vm-control.js'
import { logTail, startAgentRelay, startVmm, waitForAgent, type HostProcess } from './vm-process.js'
import {
  listVmSandboxDirs,
  readSnapshotManifest,
  readVmState,
  snapshotFiles,
  vmSandboxPaths,
  writeVmState,
  type PersistedVmState,
  type VmSandboxPaths,
  type VmSnapshotManifest,
} from './vm-state.js'

export interface QemuDriverOptions {
  /** Root of what the driver keeps: sandboxes and disks under `<dataDir>/qemu`. */
  dataDir: string
  log: Logger
  /** Where template root filesystems are kept. @default `<dataDir>/templates` */
  templatesDir?: string
  /**
   * Kernel, initramfs, images and template snapshots (built on first use, reused across runs).
   * @default `<dataDir>/qemu/images`
   */
  imagesDir?: string
  /** The built agent directory; defaults to @sandcell/agent's bundle/. */
  agentDir?: string
  /** Host id of a template's root in the template directory (the container driver's). @default 100000 */
  uidBase?: number
  /** @default 'sandcell' */
  cgroupParent?: string
  /** Deadline for a VM's agent to answer after boot or restore. @default 60000 (TCG), 15000 (KVM) */
  readyTimeoutMs?: number
  /** `auto` boots a tiny VM under KVM once and keeps the verdict; TCG when KVM cannot. @default 'auto' */
  accel?: Accelerator | 'auto'
  /** @default 'qemu-system-x86_64' */
  qemuBinary?: string
  /** Guest RAM of every VM: the largest memory limit a sandbox can have. @default 1024 */
  vmMemoryMiB?: number
  /** vCPUs of every VM; a sandbox's `cpus` limit is enforced on the host. @default the host's cores */
  vcpus?: number
  /** Create by restoring a snapshot of the template booted once (else boot each VM). @default true */
  templateSnapshots?: boolean
  /** @default the number of CPU cores */
  maxConcurrentCreates?: number
}

/** Bumped when what a template snapshot holds changes. */
const templateSnapshotVersion = 2
const minVmMemoryMiB = 128
/** Size of the template VM's disk; clones grow theirs to their own size. */
const templateDiskMiB = 64
/** Memory the template VM is snapshotted with; clones' balloons move from there. */
const templateMemoryMiB = 256
/** Host memory for QEMU on top of the guest's: its own heap and, under TCG, translated code. */
const overheadMiB = { kvm: 64, tcg: 192 } as const
const tcgCacheMiB = 64
const maxSocketPath = 107

function defaultAgentDir(): string {
  const require = createRequire(import.meta.url)
  return join(dirname(require.resolve('@sandcell/agent/package.json')), 'bundle')
}

interface Setup {
  hostNode: HostNode
  cgroupVersion: CgroupVersion
  qemuIdentity: string
  accel: Accelerator
  tscKhz: number | undefined
  kernel: string
  initramfs: string
  sandcellImage: string
}

/** Where a new VM's state comes from. */
type VmSource =
  | { kind: 'boot' }
  | { kind: 'template'; dir: string }
  | { kind: 'snapshot'; dir: string; manifest: VmSnapshotManifest }

export function createQemuDriver(options: QemuDriverOptions): QemuDriver {
  return new QemuDriver(options)
}

export class QemuDriver implements Driver {
  readonly kind = 'qemu' as const
  readonly events: SandboxEvents
  readonly #log: Logger
  readonly #dataDir: string
  readonly #sandboxesDir: string
  readonly #disksDir: string
  readonly #imagesDir: string
  readonly #templatesDir: string
  readonly #agentDir: string
  readonly #uidBase: number
  readonly #cgroupParent: string
  readonly #readyTimeoutMs: number | undefined
  readonly #accelOption: Accelerator | 'auto'
  readonly #qemuBinary: string
  readonly #vmMemoryMiB: number
  readonly #vcpus: number
  readonly #templateSnapshots: boolean
  readonly #templates: TemplateRegistry
  readonly #launches: Semaphore
  readonly #templateVms = new Map<string, Promise<{ shape: VmShape; snapshotDir?: string }>>()
  #setup: Promise<Setup> | undefined

  constructor(options: QemuDriverOptions) {
    this.#log = options.log.child({ component: 'runtime.qemu' })
    this.events = new SandboxEvents(this.#log)
    this.#dataDir = options.dataDir
    this.#sandboxesDir = join(options.dataDir, 'qemu', 'sandboxes')
    this.#disksDir = join(options.dataDir, 'qemu', 'disks')
    this.#imagesDir = options.imagesDir ?? join(options.dataDir, 'qemu', 'images')
    this.#templatesDir = options.templatesDir ?? join(options.dataDir, 'templates')
    this.#agentDir = options.agentDir ?? defaultAgentDir()
    this.#uidBase = options.uidBase ?? 100_000
    this.#cgroupParent = options.cgroupParent ?? 'sandcell'
    this.#readyTimeoutMs = options.readyTimeoutMs
    this.#accelOption = options.accel ?? 'auto'
    this.#qemuBinary = options.qemuBinary ?? 'qemu-system-x86_64'
    this.#vmMemoryMiB = options.vmMemoryMiB ?? 1024
    this.#vcpus = options.vcpus ?? availableParallelism()
    this.#templateSnapshots = options.templateSnapshots ?? true
    this.#launches = new Semaphore(options.maxConcurrentCreates ?? availableParallelism())
    this.#templates = new TemplateRegistry({
      templatesDir: this.#templatesDir,
      uidOffset: this.#uidBase,
      log: this.#log,
    })
  }

  /** Subscribes to lifecycle events of every sandbox this driver creates or adopts. */
  onEvent(listener: SandboxListener): () => void {
    return this.events.on(listener)
  }

  #tools(): { problems: string[]; details: Record<string, string> } {
    const problems: string[] = []
    const details: Record<string, string> = {}
    try {
      details.qemu =
        execFileSync(this.#qemuBinary, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? ''
    } catch {
      problems.push(`${this.#qemuBinary} does not run: apt-get install qemu-system-x86`)
    }
    const needed: [string, string][] = [
      ['socat', 'socat'],
      ['mkfs.erofs', 'erofs-utils'],
      ['mkfs.ext4', 'e2fsprogs'],
      ['unshare', 'util-linux'],
      ['nsenter', 'util-linux'],
      ['ip', 'iproute2'],
      ['gcc', 'build-essential'],
      ['lz4', 'lz4'],
      ['dpkg-deb', 'dpkg'],
    ]
    const path = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`.split(':')
    for (const [tool, pkg] of needed) {
      if (!path.some((dir) => dir.length > 0 && existsSync(join(dir, tool)))) {
        problems.push(`${tool} is missing: apt-get install ${pkg}`)
      }
    }
    return { problems, details }
  }

  probe(): Promise<ProbeResult> {
    const { problems, details } = this.#tools()
    if (process.getuid?.() !== 0) {
      problems.push('the qemu driver must run as root (cgroups, network namespaces)')
    }
    try {
      details.cgroup = `v${detectCgroupVersion()}`
    } catch (err) {
      problems.push(errorMessage(err))
    }
    details.kvm = existsSync('/dev/kvm') ? 'present' : 'absent (TCG only)'
    details.accel = this.#accelOption
    if (!existsSync(join(this.#agentDir, 'agent.mjs'))) {
      problems.push(`the agent is not built (${this.#agentDir}/agent.mjs): run npm run build`)
    }
    const socketPath = vmSandboxPaths(this.#sandboxesDir, newSandboxId()).agentSocket
    if (socketPath.length > maxSocketPath) {
      problems.push(
        `the data dir path is too long for Unix sockets (${socketPath.length} > ${maxSocketPath})`,
      )
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

  /** Host setup shared by every create: tools, kernel, initramfs, the sandcell image, accel. */
  #ensureSetup(context: Partial<BuildContext> = {}): Promise<Setup> {
    this.#setup ??= (async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(`the qemu driver cannot run here: ${probe.reason ?? 'unknown'}`)
      }
      for (const dir of [this.#dataDir, this.#sandboxesDir, this.#disksDir, this.#imagesDir]) {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      }
      accessSync(this.#agentDir)
      const build: BuildContext = { imagesDir: this.#imagesDir, log: this.#log, ...context }
      const addons = [
        join(this.#agentDir, 'node_modules/node-pty/build/Release/pty.node'),
        join(this.#agentDir, 'native/sandcell_spawn.node'),
      ].filter((addon) => existsSync(addon))
      const hostNode = await resolveHostNode(addons)
      const kernel = await ensureGuestKernel(build)
      const initramfs = await ensureInitramfs(build, kernel)
      const sandcellImage = await ensureSandcellImage(build, hostNode, this.#agentDir)
      const qemuIdentity = this.#qemuIdentity()
      const accel = await this.#resolveAccel(kernel.vmlinux, initramfs, qemuIdentity)
      const tscKhz =
        accel === 'tcg' ? parseTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) : undefined
      this.#log.info({ accel, kernel: kernel.release, qemuIdentity }, 'qemu driver ready')
      return {
        hostNode,
        cgroupVersion: detectCgroupVersion(),
        qemuIdentity,
        accel,
        tscKhz,
        kernel: kernel.vmlinux,
        initramfs,
        sandcellImage,
      }
    })()
    this.#setup.catch(() => {
      this.#setup = undefined
    })
    return this.#setup
  }

  /**
   * The accelerator VMs run under (KVM or TCG), deciding it (and building the guest kernel)
   * first when needed.
   */
  async accelerator(): Promise<Accelerator> {
    return (await this.#ensureSetup()).accel
  }

  /** The QEMU build: its states load only into the same build (microvm is not versioned). */
  #qemuIdentity(): string {
    const path = realpathSync(findExecutable(this.#qemuBinary))
    const stat = statSync(path)
    return `${path}:${stat.size}:${Math.round(stat.mtimeMs)}`
  }

  /**
   * KVM when `/dev/kvm` can boot our kernel (a nested or paravirtual /dev/kvm may not): tried
   * once with a VM that powers off as soon as its init runs, verdict cached per host kernel.
   */
  async #resolveAccel(
    kernel: string,
    initramfs: string,
    qemuIdentity: string,
  ): Promise<Accelerator> {
    if (this.#accelOption !== 'auto') {
      return this.#accelOption
    }
    if (!existsSync('/dev/kvm')) {
      this.#log.warn('no /dev/kvm: microVMs run under TCG (emulation), expect slow boots')
      return 'tcg'
    }
    const verdictPath = join(this.#imagesDir, 'kvm-probe.json')
    const key = hashParts([release(), qemuIdentity, kernel, initramfs])
    try {
      const verdict = JSON.parse(readFileSync(verdictPath, 'utf8')) as {
        key: string
        usable: boolean
      }
      if (verdict.key === key) {
        return verdict.usable ? 'kvm' : 'tcg'
      }
    } catch {
      // No verdict yet.
    }
    const log = join(this.#imagesDir, 'kvm-probe.log')
    writeFileSync(log, '')
    const child = spawn(
      this.#qemuBinary,
      [
        '-M',
        'microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=off',
        '-accel',
        'kvm',
        '-cpu',
        'host',
        '-m',
        '128M',
        '-smp',
        '1',
        '-nodefaults',
        '-no-user-config',
        '-nographic',
        '-display',
        'none',
        '-no-reboot',
        '-kernel',
        kernel,
        '-initrd',
        initramfs,
        '-append',
        'console=ttyS0 quiet panic=-1 reboot=t sandcell.probe=1',
        '-serial',
        `file:${log}`,
      ],
      { stdio: 'ignore' },
    )
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.once('error', () => undefined)
    const finished = await Promise.race([exited.then(() => true), delay(20_000).then(() => false)])
    if (!finished) {
      child.kill('SIGKILL')
    }
    const usable = finished && readFileSync(log, 'utf8').includes('sandcell-init: probe ok')
    writeFileSync(verdictPath, JSON.stringify({ key, usable, at: new Date().toISOString() }))
    if (!usable) {
      this.#log.warn({ log: logTail(log, 5) }, '/dev/kvm cannot run the guest kernel: using TCG')
    }
    return usable ? 'kvm' : 'tcg'
  }

  async #shape(
    template: string,
    setup: Setup,
    context: Partial<BuildContext> = {},
  ): Promise<VmShape> {
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
    return {
      accel: setup.accel,
      vcpus: this.#vcpus,
      memoryMiB: this.#vmMemoryMiB,
      kernel: setup.kernel,
      initramfs: setup.initramfs,
      rootfsImage,
      sandcellImage: setup.sandcellImage,
      tcgCacheMiB,
    }
  }

  #readyTimeout(accel: Accelerator): number {
    return this.#readyTimeoutMs ?? (accel === 'tcg' ? 60_000 : 15_000)
  }

  /** The template's VM shape, and its booted-once snapshot when template snapshots are on. */
  #templateVm(
    template: string,
    context: Partial<BuildContext> = {},
  ): Promise<{ shape: VmShape; snapshotDir?: string }> {
    let pending = this.#templateVms.get(template)
    if (pending === undefined) {
      pending = (async () => {
        const setup = await this.#ensureSetup(context)
        const shape = await this.#shape(template, setup, context)
        if (!this.#templateSnapshots) {
          return { shape }
        }
        const snapshotDir = await this.#ensureTemplateSnapshot(template, shape, setup, context)
        return { shape, snapshotDir }
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

  /**
   * Boots the template once with its RAM in a shared file, waits for the agent, shrinks the
   * balloon to the template size and saves the device state only (`x-ignore-shared`): clones
   * map that file privately and load a few dozen KiB.
   */
  async #ensureTemplateSnapshot(
    template: string,
    shape: VmShape,
    setup: Setup,
    context: Partial<BuildContext>,
  ): Promise<string> {
    const key = `${template}-${hashParts([templateSnapshotVersion, setup.qemuIdentity, shape, templateMemoryMiB, templateDiskMiB, setup.tscKhz])}`
    const build: BuildContext = { imagesDir: this.#imagesDir, log: this.#log, ...context }
    return ensureArtifact(join(this.#imagesDir, 'snapshots'), key, build, async (work) => {
      build.log.info({ template }, 'booting the template VM once to snapshot it')
      build.onProgress?.({
        phase: 'template-snapshot',
        done: 0,
        total: 0,
        message: `booting ${template} to snapshot it`,
      })
      const started = performance.now()
      const id = `template-${randomBytes(4).toString('hex')}`
      const paths = vmSandboxPaths(work, 'vm')
      mkdirSync(paths.dir, { mode: 0o700 })
      const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
      try {
        cgroup.setLimits(
          vmCgroupLimits(
            { memoryMiB: shape.memoryMiB, cpus: availableParallelism(), pids: 1024, diskMiB: 0 },
            overheadMiB[shape.accel],
          ),
        )
        sparseCopy(
          await ensureBlankImage(this.#disksDir, templateDiskMiB, 0),
          join(work, snapshotFiles.disk),
        )
        const memory: VmMemory = { path: join(work, 'memory'), shared: true }
        const { qemu } = await this.#boot(
          shape,
          setup,
          { ...paths, disk: join(work, snapshotFiles.disk) },
          memory,
          cgroup,
          1024,
          context.signal,
        )
        await warmUpAgent(paths.agentSocket, 3)
        await withQmp(
          paths.qmpSocket,
          async (qmp) => {
            await setBalloon(qmp, templateMemoryMiB)
            if (!(await waitForBalloon(qmp, templateMemoryMiB, 120_000))) {
              throw new DriverError(
                'the template VM did not give its memory back to the balloon in time',
              )
            }
            await qmp.execute('stop')
            await saveVmState(qmp, join(work, snapshotFiles.state), true)
            await qmp.execute('quit').catch(() => undefined)
          },
          { timeoutMs: 180_000 },
        )
        for (let i = 0; i < 200 && isProcessAlive(qemu.pid, qemu.startTime); i++) {
          await delay(10)
        }
        writeFileSync(
          join(work, 'template.json'),
          JSON.stringify(
            { template, shape, bootMs: Math.round(performance.now() - started) },
            null,
            2,
          ),
        )
        build.log.info(
          { template, durationMs: Math.round(performance.now() - started) },
          'template VM snapshotted',
        )
      } finally {
        await cgroup.killAll().catch(() => undefined)
        if (cgroup.exists()) {
          await cgroup.remove().catch(() => undefined)
        }
        rmSync(paths.dir, { recursive: true, force: true })
      }
    })
  }

  /** Cold boot: QEMU with the kernel, then the agent relay, then wait for the agent. */
  async #boot(
    shape: VmShape,
    setup: Setup,
    paths: VmSandboxPaths,
    memory: VmMemory,
    cgroup: Cgroup,
    pids: number,
    signal: AbortSignal | undefined,
  ): Promise<{ qemu: HostProcess & { child: ChildProcess }; relay: HostProcess }> {
    const cmdline = buildKernelCmdline({
      accel: shape.accel,
      ...(setup.tscKhz === undefined ? {} : { tscKhz: setup.tscKhz }),
      clockNs: BigInt(Date.now()) * 1_000_000n,
      seedHex: randomBytes(32).toString('hex'),
      pids,
    })
    const qemu = await startVmm({
      name: 'QEMU',
      binary: this.#qemuBinary,
      args: buildQemuArgs({ shape, paths, memory, cmdline, incoming: false }),
      cgroup,
      logPath: paths.log,
      apiSocket: paths.qmpSocket,
      ...(signal === undefined ? {} : { signal }),
    })
    const relay = await startAgentRelay({
      vmmPid: qemu.pid,
      agentSocket: paths.agentSocket,
      cgroup,
      logPath: paths.log,
    })
    await waitForAgent({
      agentSocket: paths.agentSocket,
      vmm: qemu,
      logPath: paths.log,
      timeoutMs: this.#readyTimeout(shape.accel) * 3,
      ...(signal === undefined ? {} : { signal }),
    })
    return { qemu, relay }
  }

  /** An empty sparse file of the VM's RAM size, mapped privately as fresh guest RAM. */
  #blankMemory(memoryMiB: number): string {
    const path = join(this.#disksDir, `blank-ram-${memoryMiB}m`)
    if (!existsSync(path)) {
      const temp = `${path}.${process.pid}.tmp`
      writeFileSync(temp, '')
      truncateSync(temp, memoryMiB * 1024 * 1024)
      renameSync(temp, path)
    }
    return path
  }

  #validate(limits: SandboxLimits): void {
    validateLimits(limits)
    if (limits.memoryMiB < minVmMemoryMiB || limits.memoryMiB > this.#vmMemoryMiB) {
      throw new InvalidArgumentError(
        `impossible limits: memoryMiB must be between ${minVmMemoryMiB} and ${this.#vmMemoryMiB} MiB for a VM (got ${limits.memoryMiB}; the largest is the driver's vmMemoryMiB)`,
        { details: { limits } },
      )
    }
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const spec = this.#fromSnapshotSpec(requested)
    assertTemplateExists(spec.template)
    this.#validate(spec.limits)
    const started = performance.now()
    const timings: Record<string, number> = {}
    let mark = started
    const step = (name: string): void => {
      const now = performance.now()
      timings[name] = Math.round((now - mark) * 10) / 10
      mark = now
    }
    const setup = await this.#ensureSetup()
    let source: VmSource
    let shape: VmShape
    if (spec.fromSnapshot !== undefined) {
      const manifest = readSnapshotManifest(spec.fromSnapshot.dir)
      if (manifest === undefined) {
        throw new NotFoundError(`snapshot files are missing in ${spec.fromSnapshot.dir}`)
      }
      if (manifest.qemuIdentity !== setup.qemuIdentity) {
        throw new FailedPreconditionError(
          `snapshot ${spec.fromSnapshot.dir} was saved by another QEMU build (${manifest.qemuIdentity}); microVM states load only into the same build`,
        )
      }
      source = { kind: 'snapshot', dir: spec.fromSnapshot.dir, manifest }
      shape = manifest.shape
    } else {
      const vm = await this.#templateVm(
        spec.template,
        options.signal === undefined ? {} : { signal: options.signal },
      )
      shape = vm.shape
      source =
        vm.snapshotDir === undefined ? { kind: 'boot' } : { kind: 'template', dir: vm.snapshotDir }
    }
    if (spec.limits.memoryMiB > shape.memoryMiB) {
      throw new InvalidArgumentError(`memoryMiB must be at most ${shape.memoryMiB} for this VM`)
    }
    step('prepare')
    return this.#launches.run(async () => {
      step('queue')
      const clock = { started, timings, step }
      try {
        return await this.#launch(spec, setup, shape, source, options, clock)
      } catch (err) {
        // Now and then (about one restore in thirty under TCG) a restored guest's control port
        // stays silent; the VM is gone by now, and the same files restore fine a second time.
        if (source.kind === 'boot' || options.signal?.aborted === true || !isSilentGuest(err)) {
          throw err
        }
        this.#log.warn({ err: errorMessage(err) }, 'restored guest did not answer; restoring again')
        return this.#launch(spec, setup, shape, source, options, clock)
      }
    }, options.signal)
  }

  #fromSnapshotSpec(spec: SandboxSpec): SandboxSpec {
    const snapshot = spec.fromSnapshot
    if (snapshot === undefined) {
      return spec
    }
    if (snapshot.driver !== 'qemu') {
      throw new InvalidArgumentError(
        `a ${snapshot.driver} snapshot cannot start a qemu sandbox; use the ${snapshot.driver} driver`,
      )
    }
    return {
      ...spec,
      template: snapshot.template,
      limits: { ...spec.limits, diskMiB: snapshot.diskMiB },
    }
  }

  async #launch(
    spec: SandboxSpec,
    setup: Setup,
    shape: VmShape,
    source: VmSource,
    options: { signal?: AbortSignal },
    clock: { started: number; timings: Record<string, number>; step: (name: string) => void },
  ): Promise<Sandbox> {
    const { started, timings, step } = clock
    const id: SandboxId = spec.id ?? newSandboxId()
    const log = this.#log.child({ sandboxId: id })
    const paths = vmSandboxPaths(this.#sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
    const undo = new CleanupStack()
    undo.defer('sandbox leftovers', () => removeVmLeftovers(paths, cgroup))
    const limits = spec.limits
    const diskBytes = limits.diskMiB * 1024 * 1024
    try {
      mkdirSync(paths.dir, { mode: 0o700 })
      cgroup.setLimits(vmCgroupLimits(limits, overheadMiB[shape.accel], spec.background === true))
      step('cgroup')
      let qemu: HostProcess & { child: ChildProcess }
      let relay: HostProcess
      if (source.kind === 'boot') {
        sparseCopy(await ensureBlankImage(this.#disksDir, limits.diskMiB, 0), paths.disk)
        step('disk')
        ;({ qemu, relay } = await this.#boot(
          shape,
          setup,
          paths,
          { path: this.#blankMemory(shape.memoryMiB), shared: false },
          cgroup,
          limits.pids,
          options.signal,
        ))
        await withQmp(paths.qmpSocket, (qmp) => setBalloon(qmp, limits.memoryMiB))
        step('boot')
      } else {
        sparseCopy(join(source.dir, snapshotFiles.disk), paths.disk)
        const grow = statSync(paths.disk).size < diskBytes
        if (grow) {
          truncateSync(paths.disk, diskBytes)
        }
        step('disk')
        const memory: VmMemory = {
          path:
            source.kind === 'template'
              ? join(source.dir, 'memory')
              : this.#blankMemory(shape.memoryMiB),
          shared: false,
        }
        qemu = await startVmm({
          name: 'QEMU',
          binary: this.#qemuBinary,
          // The kernel command line is not used on a restore; only the device line matters.
          args: buildQemuArgs({ shape, paths, memory, cmdline: 'restored', incoming: true }),
          cgroup,
          logPath: paths.log,
          apiSocket: paths.qmpSocket,
          incomingState: join(source.dir, snapshotFiles.state),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        })
        relay = await startAgentRelay({
          vmmPid: qemu.pid,
          agentSocket: paths.agentSocket,
          cgroup,
          logPath: paths.log,
        })
        step('spawn')
        await withQmp(
          paths.qmpSocket,
          async (qmp) => {
            await loadVmState(qmp, source.kind === 'template')
            step('restore')
            if (grow) {
              await qmp.execute('block_resize', { device: 'disk', size: diskBytes })
            }
            await setBalloon(qmp, limits.memoryMiB)
            await qmp.execute('cont')
          },
          { timeoutMs: this.#readyTimeout(shape.accel) },
        )
        const guestTimeoutMs = this.#readyTimeout(shape.accel)
        await syncGuest(paths.ctlSocket, { timeoutMs: guestTimeoutMs })
        await guestRequest(paths.ctlSocket, `pids ${limits.pids}`, { timeoutMs: guestTimeoutMs })
        if (grow) {
          await guestRequest(paths.ctlSocket, `resize-disk ${diskBytes}`, {
            timeoutMs: guestTimeoutMs,
          })
        }
        step('guest')
        await waitForAgent({
          agentSocket: paths.agentSocket,
          vmm: qemu,
          logPath: paths.log,
          timeoutMs: this.#readyTimeout(shape.accel),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        })
        step('agent')
        // Under TCG every new QEMU translates the guest's code afresh: one command now makes
        // the first one of the caller take a few hundred ms instead of a second or more.
        if (shape.accel === 'tcg') {
          await warmUpAgent(paths.agentSocket, 1, 'user')
          step('warm-up')
        }
      }
      const info: SandboxInfo = {
        id,
        driver: 'qemu',
        template: spec.template,
        limits: { ...limits },
        labels: { ...spec.labels },
        createdAt: new Date(),
        agentSocket: paths.agentSocket,
      }
      const state: PersistedVmState = {
        version: 1,
        id,
        template: spec.template,
        limits: info.limits,
        labels: info.labels,
        createdAt: info.createdAt.toISOString(),
        paused: false,
        qemu: { pid: qemu.pid, startTime: qemu.startTime },
        relay,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#cgroupParent,
        shape,
      }
      writeVmState(paths, state)
      undo.release()
      const sandbox = guardSandbox(
        this.#sandbox({ info, paths, cgroup, state, child: qemu.child, paused: false, log }),
        {
          log: this.#log,
          events: this.events,
        },
      )
      const durationMs = Math.round(performance.now() - started)
      log.info(
        { template: spec.template, source: source.kind, accel: shape.accel, durationMs, timings },
        'sandbox created',
      )
      this.events.emit({ type: 'created', sandbox, durationMs })
      return sandbox
    } catch (err) {
      // The VM's last words explain most failures; they go with the directory otherwise.
      const tail = logTail(paths.log, 15)
      await undo.dispose().catch((cleanupErr: unknown) => {
        log.error({ err: cleanupErr }, 'cleanup after a failed create left something behind')
      })
      if (err instanceof DriverError && tail.length > 0 && !err.message.includes(tail)) {
        throw new DriverError(`${err.message}\n${tail}`, { cause: err })
      }
      throw err
    }
  }

  #sandbox(options: {
    info: SandboxInfo
    paths: VmSandboxPaths
    cgroup: Cgroup
    state: PersistedVmState
    child?: ChildProcess
    paused: boolean
    log: Logger
  }): QemuSandbox {
    const qemuIdentity = this.#qemuIdentity()
    return new QemuSandbox({
      ...options,
      qemuIdentity,
      overheadMiB: overheadMiB[options.state.shape.accel],
      guestTimeoutMs: this.#readyTimeout(options.state.shape.accel),
    })
  }

  async adopt(): Promise<Sandbox[]> {
    const cgroupVersion = detectCgroupVersion()
    const adopted: Sandbox[] = []
    const known = new Set<string>()
    for (const id of listVmSandboxDirs(this.#sandboxesDir)) {
      known.add(id)
      const paths = vmSandboxPaths(this.#sandboxesDir, id)
      const state = readVmState(paths)
      const cgroup = openCgroup({
        version: state?.cgroupVersion ?? cgroupVersion,
        parent: state?.cgroupParent ?? this.#cgroupParent,
        id,
      })
      const log = this.#log.child({ sandboxId: id })
      if (state === undefined || !isProcessAlive(state.qemu.pid, state.qemu.startTime)) {
        log.info('cleaning up the leftovers of a dead VM sandbox')
        await removeVmLeftovers(paths, cgroup).catch((err: unknown) =>
          log.error({ err }, 'could not clean up a dead VM sandbox'),
        )
        continue
      }
      if (!isProcessAlive(state.relay.pid, state.relay.startTime)) {
        // The relay died (killed by hand): the VM is fine, serve its agent again.
        try {
          if (cgroup.isFrozen()) {
            await cgroup.thaw()
          }
          state.relay = await startAgentRelay({
            vmmPid: state.qemu.pid,
            agentSocket: paths.agentSocket,
            cgroup,
            logPath: paths.log,
          })
          if (state.paused) {
            await cgroup.freeze()
          }
          writeVmState(paths, state)
        } catch (err) {
          log.error({ err }, 'could not restart the agent relay of an adopted VM')
        }
      }
      const info: SandboxInfo = {
        id,
        driver: 'qemu',
        template: state.template,
        limits: state.limits,
        labels: state.labels,
        createdAt: new Date(state.createdAt),
        agentSocket: paths.agentSocket,
      }
      const sandbox = guardSandbox(
        this.#sandbox({ info, paths, cgroup, state, paused: state.paused, log }),
        {
          log: this.#log,
          events: this.events,
        },
      )
      adopted.push(sandbox)
      this.events.emit({ type: 'adopted', sandbox })
    }
    // Cgroups of ours whose sandbox directory is gone: a crash between the two.
    for (const id of listCgroups(cgroupVersion, this.#cgroupParent)) {
      if (!known.has(id) && id.startsWith('sb')) {
        const cgroup = openCgroup({ version: cgroupVersion, parent: this.#cgroupParent, id })
        if (readFileSafe(`/proc/${cgroup.processes()[0] ?? 0}/cmdline`).includes('qemu-system')) {
          await cgroup.killAll()
          await cgroup.remove()
        }
      }
    }
    return adopted
  }

  /** Removes the parent cgroup when no sandbox is left in it; live VMs are untouched. */
  close(): Promise<void> {
    try {
      removeCgroupParent(detectCgroupVersion(), this.#cgroupParent)
    } catch {
      // No cgroups here: nothing was created.
    }
    return Promise.resolve()
  }
}

/**
 * Runs a few trivial commands through the agent, as user and as root: the agent's spawn path,
 * the shell and libc are then compiled, cached and paged in, in the template snapshot too.
 */
async function warmUpAgent(agentSocket: string, rounds: number, ...users: string[]): Promise<void> {
  const connection = createAgentConnection(agentSocket)
  try {
    for (let i = 0; i < rounds; i++) {
      for (const user of users.length > 0 ? users : ['user', 'root']) {
        await runCommand(connection, {
          cmd: '/bin/sh',
          args: ['-c', 'true'],
          user,
          timeoutMs: 60_000,
        })
      }
    }
  } finally {
    // No connection may be open in a snapshot: its host end is gone in every copy.
    connection.close()
  }
}

/** A command name resolved through PATH (as the shell would), or a path kept as it is. */
function findExecutable(command: string): string {
  if (command.includes('/')) {
    return command
  }
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const candidate = join(dir, command)
    if (dir.length > 0 && existsSync(candidate)) {
      return candidate
    }
  }
  throw new DriverError(`${command} is not on PATH: apt-get install qemu-system-x86`)
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}
