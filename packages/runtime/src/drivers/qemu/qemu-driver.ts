/**
 * The microVM driver on QEMU's `microvm` machine (KVM when it can run the guest, TCG otherwise):
 * Debian's cloud kernel, sandcell-init as PID 1, the template as a read-only image under a
 * per-VM writable disk, the guest on a TAP in the VM's network namespace (a network slot's, or a
 * private one with no way out), its agent reached from there by a Unix-socket relay.
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
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { availableParallelism, release } from 'node:os'
import { join } from 'node:path'
import {
  DriverError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  delay,
  errorMessage,
  newSandboxId,
  type Logger,
  type SandboxId,
  isProcessAlive,
  StepTimer,
  standardPath,
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
import { createAgentConnection } from '../../agent-connection.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import { acquireNetwork, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
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
import type { HostNode } from '../../os/host-node.js'
import { sparseCopy } from '../../os/native.js'
import { SandboxEvents, type SandboxListener } from '../../sandbox-events.js'
import { assertTemplateExists, templateStatuses } from '../../templates/template-registry.js'
import { ensureBlankImage } from '../../disks/blank-image.js'
import { adoptVmSandboxes } from '../microvm/adopt-vms.js'
import { guestRequest, isSilentGuest, syncGuest } from '../microvm/guest-ctl.js'
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
  logTail,
  startAgentRelay,
  startVmm,
  waitForAgent,
  type HostProcess,
} from '../microvm/vm-process.js'
import { vmCgroupLimits } from '../microvm/vm-sandbox.js'
import {
  agentTarget,
  buildKernelCmdline,
  buildQemuArgs,
  parseTscKhz,
  type Accelerator,
  type VmMemory,
  type VmShape,
} from './qemu-args.js'
import { QemuSandbox } from './qemu-sandbox.js'
import { withQmp } from './qmp-client.js'
import { loadVmState, saveVmState, setBalloon, waitForBalloon } from './vm-control.js'
import {
  readSnapshotManifest,
  readVmState,
  snapshotFiles,
  vmSandboxPaths,
  writeVmState,
  type PersistedVmState,
  type VmSandboxPaths,
  type VmSnapshotManifest,
} from './vm-state.js'

export interface QemuDriverOptions extends MicroVmDriverOptions {
  /** @default 'sandcell' */
  cgroupParent?: string
  /** Deadline for a VM's agent to answer after boot or restore. @default 60000 (TCG), 15000 (KVM) */
  readyTimeoutMs?: number
  /** `auto` boots a tiny VM under KVM once and keeps the verdict; TCG when KVM cannot. @default 'auto' */
  accel?: Accelerator | 'auto'
  /** @default 'qemu-system-x86_64' */
  qemuBinary?: string
  /** vCPUs of every VM; a sandbox's `cpus` limit is enforced on the host. @default the host's cores */
  vcpus?: number
  /** Create by restoring a snapshot of the template booted once (else boot each VM). @default true */
  templateSnapshots?: boolean
}

/** Bumped when what a template snapshot holds changes. */
const templateSnapshotVersion = 2
/** Size of the template VM's disk; clones grow theirs to their own size. */
const templateDiskMiB = 64
/** Memory the template VM is snapshotted with; clones' balloons move from there. */
const templateMemoryMiB = 256
/** Host memory for QEMU on top of the guest's: its own heap and, under TCG, translated code. */
const overheadMiB = { kvm: 64, tcg: 192 } as const
const tcgCacheMiB = 64
const maxSocketPath = 107

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
  readonly #vm: MicroVmSettings
  readonly #log: Logger
  readonly #readyTimeoutMs: number | undefined
  readonly #accelOption: Accelerator | 'auto'
  readonly #qemuBinary: string
  readonly #vcpus: number
  readonly #templateSnapshots: boolean
  readonly #templateVms = new PromiseCache<string, { shape: VmShape; snapshotDir?: string }>()
  readonly #setup = new PromiseCache<'host', Setup>()

  constructor(options: QemuDriverOptions) {
    this.#vm = resolveMicroVmSettings('qemu', options, { cgroupParent: 'sandcell' })
    this.#log = this.#vm.log
    this.events = new SandboxEvents(this.#log)
    this.#readyTimeoutMs = options.readyTimeoutMs
    this.#accelOption = options.accel ?? 'auto'
    this.#qemuBinary = options.qemuBinary ?? 'qemu-system-x86_64'
    this.#vcpus = options.vcpus ?? availableParallelism()
    this.#templateSnapshots = options.templateSnapshots ?? true
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
    problems.push(
      ...missingTools([
        ['socat', 'socat'],
        ['mkfs.erofs', 'erofs-utils'],
        ['mkfs.ext4', 'e2fsprogs'],
        ['unshare', 'util-linux'],
        ['nsenter', 'util-linux'],
        ['ip', 'iproute2'],
        ['gcc', 'build-essential'],
        ['lz4', 'lz4'],
        ['dpkg-deb', 'dpkg'],
      ]),
    )
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
    if (!existsSync(join(this.#vm.agentDir, 'agent.mjs'))) {
      problems.push(`the agent is not built (${this.#vm.agentDir}/agent.mjs): run npm run build`)
    }
    const socketPath = vmSandboxPaths(this.#vm.sandboxesDir, newSandboxId()).agentSocket
    if (socketPath.length > maxSocketPath) {
      problems.push(
        `the data dir path is too long for Unix sockets (${socketPath.length} > ${maxSocketPath})`,
      )
    }
    return Promise.resolve(toProbeResult(problems, details))
  }

  templates(): Promise<TemplateStatus[]> {
    return Promise.resolve(templateStatuses(this.#vm.templatesDir))
  }

  /** Host setup shared by every create: tools, kernel, initramfs, the sandcell image, accel. */
  #ensureSetup(context: Partial<BuildContext> = {}): Promise<Setup> {
    return this.#setup.get('host', async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(`the qemu driver cannot run here: ${probe.reason ?? 'unknown'}`)
      }
      for (const dir of [
        this.#vm.dataDir,
        this.#vm.sandboxesDir,
        this.#vm.disksDir,
        this.#vm.imagesDir,
      ]) {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      }
      accessSync(this.#vm.agentDir)
      const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
      const { hostNode, kernel, initramfs, sandcellImage } = await ensureGuestBase(
        build,
        this.#vm.agentDir,
      )
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
    })
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
    const verdictPath = join(this.#vm.imagesDir, 'kvm-probe.json')
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
    const log = join(this.#vm.imagesDir, 'kvm-probe.log')
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
    const rootfsImage = await ensureTemplateRootfs(this.#vm, template, context)
    return {
      accel: setup.accel,
      vcpus: this.#vcpus,
      memoryMiB: this.#vm.vmMemoryMiB,
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
    return this.#templateVms.get(template, async () => {
      const setup = await this.#ensureSetup(context)
      const shape = await this.#shape(template, setup, context)
      if (!this.#templateSnapshots) {
        return { shape }
      }
      const snapshotDir = await this.#ensureTemplateSnapshot(template, shape, setup, context)
      return { shape, snapshotDir }
    })
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
    const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
    return ensureArtifact(join(this.#vm.imagesDir, 'snapshots'), key, build, async (work) => {
      build.log.info({ template }, 'booting the template VM once to snapshot it')
      build.onProgress?.({
        phase: 'template-snapshot',
        done: 0,
        total: 0,
        message: `booting ${template} to snapshot it`,
      })
      const started = performance.now()
      const paths = vmSandboxPaths(work, 'vm')
      mkdirSync(paths.dir, { mode: 0o700 })
      const scratch = {
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        memoryMiB: shape.memoryMiB,
        overheadMiB: overheadMiB[shape.accel],
        dir: paths.dir,
      }
      await withTemplateVmCgroup(scratch, async (cgroup) => {
        sparseCopy(
          await ensureBlankImage(this.#vm.disksDir, templateDiskMiB, 0),
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
      })
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
    netnsPath?: string,
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
      ...(netnsPath === undefined ? {} : { netnsPath }),
      ...(signal === undefined ? {} : { signal }),
    })
    const relay = await startAgentRelay({
      vmmPid: qemu.pid,
      agentSocket: paths.agentSocket,
      cgroup,
      logPath: paths.log,
      target: agentTarget,
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
    const path = join(this.#vm.disksDir, `blank-ram-${memoryMiB}m`)
    if (!existsSync(path)) {
      const temp = `${path}.${process.pid}.tmp`
      writeFileSync(temp, '')
      truncateSync(temp, memoryMiB * 1024 * 1024)
      renameSync(temp, path)
    }
    return path
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const spec = specFromSnapshot(requested, 'qemu')
    assertTemplateExists(spec.template)
    validateVmLimits(spec.limits, this.#vm.vmMemoryMiB)
    const clock = new StepTimer()
    const step = (name: string): void => clock.step(name)
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
    return this.#vm.launches.run(async () => {
      step('queue')
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

  async #launch(
    spec: SandboxSpec,
    setup: Setup,
    shape: VmShape,
    source: VmSource,
    options: { signal?: AbortSignal },
    clock: StepTimer,
  ): Promise<Sandbox> {
    const step = (name: string): void => clock.step(name)
    const id: SandboxId = spec.id ?? newSandboxId()
    const log = this.#log.child({ sandboxId: id })
    const paths = vmSandboxPaths(this.#vm.sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#vm.cgroupParent, id })
    const limits = spec.limits
    const diskBytes = limits.diskMiB * 1024 * 1024
    const held: { network?: SandboxNetworkHandle } = {}
    const { info, state, child } = await undoneOnFailure({ paths, cgroup, log, held }, async () => {
      mkdirSync(paths.dir, { mode: 0o700 })
      cgroup.setLimits(vmCgroupLimits(limits, overheadMiB[shape.accel], spec.background === true))
      step('cgroup')
      const network = await acquireNetwork(this.#vm.network, 'vm', spec, id)
      if (network !== undefined) {
        held.network = network
        step('network')
      }
      const netnsPath = network?.slot.addresses.netnsPath
      let qemu: HostProcess & { child: ChildProcess }
      let relay: HostProcess
      if (source.kind === 'boot') {
        sparseCopy(await ensureBlankImage(this.#vm.disksDir, limits.diskMiB, 0), paths.disk)
        step('disk')
        ;({ qemu, relay } = await this.#boot(
          shape,
          setup,
          paths,
          { path: this.#blankMemory(shape.memoryMiB), shared: false },
          cgroup,
          limits.pids,
          options.signal,
          netnsPath,
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
          ...(netnsPath === undefined ? {} : { netnsPath }),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        })
        relay = await startAgentRelay({
          vmmPid: qemu.pid,
          agentSocket: paths.agentSocket,
          cgroup,
          logPath: paths.log,
          target: agentTarget,
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
      const record = newVmRecord({
        id,
        driver: 'qemu',
        spec,
        agentSocket: paths.agentSocket,
        relay,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        network,
      })
      const state: PersistedVmState = {
        ...record.state,
        qemu: { pid: qemu.pid, startTime: qemu.startTime },
        shape,
      }
      writeVmState(paths, state)
      return { info: record.info, state, child: qemu.child }
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
    const durationMs = clock.elapsedMs()
    const { timings } = clock
    log.info(
      { template: spec.template, source: source.kind, accel: shape.accel, durationMs, timings },
      'sandbox created',
    )
    this.events.emit({ type: 'created', sandbox, durationMs })
    return sandbox
  }

  #sandbox(options: {
    info: SandboxInfo
    paths: VmSandboxPaths
    cgroup: Cgroup
    state: PersistedVmState
    child?: ChildProcess
    paused: boolean
    log: Logger
    network?: SandboxNetworkHandle
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
    const { adopted, known } = await adoptVmSandboxes({
      sandboxesDir: this.#vm.sandboxesDir,
      cgroupParent: this.#vm.cgroupParent,
      log: this.#log,
      events: this.events,
      network: this.#vm.network,
      what: 'VM',
      paths: vmSandboxPaths,
      readState: readVmState,
      vmmProcess: (state) => state.qemu,
      restartRelay: async ({ paths, state, cgroup }) => {
        // A paused VM's cgroup is frozen: socat could not start in it.
        if (cgroup.isFrozen()) {
          await cgroup.thaw()
        }
        state.relay = await startAgentRelay({
          vmmPid: state.qemu.pid,
          agentSocket: paths.agentSocket,
          cgroup,
          logPath: paths.log,
          target: agentTarget,
        })
        if (state.paused) {
          await cgroup.freeze()
        }
        writeVmState(paths, state)
      },
      sandbox: ({ id, paths, state, cgroup, log, network }) =>
        this.#sandbox({
          info: adoptedVmInfo(id, 'qemu', state, paths.agentSocket, network),
          paths,
          cgroup,
          state,
          paused: state.paused,
          log,
          ...(network === undefined ? {} : { network }),
        }),
    })
    const cgroupVersion = detectCgroupVersion()
    // Cgroups of ours whose sandbox directory is gone: a crash between the two.
    for (const id of listCgroups(cgroupVersion, this.#vm.cgroupParent)) {
      if (!known.has(id) && id.startsWith('sb')) {
        const cgroup = openCgroup({ version: cgroupVersion, parent: this.#vm.cgroupParent, id })
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
      removeCgroupParent(detectCgroupVersion(), this.#vm.cgroupParent)
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

/** A command name resolved through the standard PATH, or a path kept as it is. */
function findExecutable(command: string): string {
  if (command.includes('/')) {
    return command
  }
  for (const dir of standardPath.split(':')) {
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
