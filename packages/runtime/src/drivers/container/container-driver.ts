/**
 * The Linux container driver: bubblewrap namespaces over an overlayfs root (template below, a
 * sparse ext4 disk above), cgroup limits, seccomp, and the agent inside. Sandboxes are
 * detached from this process so that a later one can adopt or clean them.
 */
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import {
  accessSync,
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import {
  TemplateRegistry,
  assertTemplateExists,
  resolveHostNode,
  templateStatuses,
  type HostNode,
  type PreparedTemplate,
} from '@sandcell/images'
import {
  CleanupStack,
  DriverError,
  InvalidArgumentError,
  NotFoundError,
  Semaphore,
  type Logger,
  newSandboxId,
  type SandboxId,
  isProcessAlive,
  StepTimer,
} from '@sandcell/shared'
import type {
  Driver,
  ProbeResult,
  Sandbox,
  SandboxSpec,
  TemplateProgress,
  TemplateStatus,
} from '../../driver.js'
import { resolvConfFor, type SandboxNetwork } from '@sandcell/network'
import { guardSandbox } from '../../guarded-sandbox.js'
import { startSandboxTemplate } from '../../template-start.js'
import {
  createCgroup,
  detectCgroupVersion,
  listCgroups,
  openCgroup,
  removeCgroupParent,
  type CgroupVersion,
} from '../../os/cgroups.js'
import { SandboxEvents, type SandboxListener } from '../../sandbox-events.js'
import { buildBwrapArgs } from './bwrap-args.js'
import {
  acquireNetwork,
  adoptNetwork,
  type SandboxNetworkHandle,
} from '../../sandbox-network-handle.js'
import {
  ContainerSandbox,
  removeContainerLeftovers,
  snapshotDiskName,
} from './container-sandbox.js'
import { launchSandbox } from './launch.js'
import { captureUpperDir } from './layer-capture.js'
import { toCgroupLimits } from './limits.js'
import { validateLimits } from '../validate-limits.js'
import { adoptedSandboxInfo, listSandboxDirs, newSandboxRecord } from '../persisted-sandbox.js'
import { readState, sandboxPaths, writeState } from './sandbox-dir.js'
import { buildSeccompFilter } from './seccomp/seccomp-filter.js'
import { mountSandboxRoot } from './writable-disk.js'
import { ensureBlankImage } from '../../disks/blank-image.js'
import { agentBundleProblem, defaultAgentDir, socketPathProblem } from '../host-checks.js'

export interface ContainerDriverOptions {
  /** Root of everything the driver keeps: templates, disks, sandboxes. */
  dataDir: string
  log: Logger
  /** Where template root filesystems are kept. @default `<dataDir>/templates` */
  templatesDir?: string
  /** Where template builds keep their layers and manifests. @default `<dataDir>/builds` */
  buildsDir?: string
  /** The built agent directory (agent.mjs + what it loads); defaults to @sandcell/agent's bundle/. */
  agentDir?: string
  /** Host uid of the sandbox's root; sandbox uid N is host uid `uidBase + N`. @default 100000 */
  uidBase?: number
  /** @default 'sandcell' */
  cgroupParent?: string
  /** @default 10000 */
  readyTimeoutMs?: number
  /** How long a built template's ready command may keep failing at a create. @default 600000 */
  templateReadyTimeoutMs?: number
  /** @default true */
  seccomp?: boolean
  /** @default 'sandbox' */
  hostname?: string
  /**
   * Sandbox networking: every new sandbox runs in a network slot of its own, with NAT, egress
   * rules and DNS. Absent: sandboxes have loopback only.
   */
  network?: SandboxNetwork
  /**
   * Sandboxes started at once; more creates wait their turn. Each agent start is CPU-bound
   * (~150 ms of a core), so a burst beyond the cores only makes every one of them late.
   * @default the number of CPU cores
   */
  maxConcurrentCreates?: number
}

/** Number of uids mapped into each sandbox: the conventional 16-bit range. */
const uidCount = 65536
/**
 * One V8 worker thread: the agent is I/O-bound, and each thread costs memory and a pid.
 * (Heap-size caps were measured: no idle gain, 20 ms slower start, 3-5x slower output floods.)
 */
const agentNodeFlags = ['--v8-pool-size=1']

/** A spec that starts from a snapshot takes the snapshot's template and disk size. */
function fromSnapshotSpec(spec: SandboxSpec): SandboxSpec {
  const snapshot = spec.fromSnapshot
  if (snapshot === undefined) {
    return spec
  }
  if (snapshot.driver !== 'container') {
    throw new InvalidArgumentError(
      `a ${snapshot.driver} snapshot cannot start a container sandbox; use the ${snapshot.driver} driver`,
    )
  }
  if (!existsSync(join(snapshot.dir, snapshotDiskName))) {
    throw new NotFoundError(`snapshot files are missing in ${snapshot.dir}`)
  }
  return {
    ...spec,
    template: snapshot.template,
    limits: { ...spec.limits, diskMiB: snapshot.diskMiB },
  }
}

export function createContainerDriver(options: ContainerDriverOptions): ContainerDriver {
  return new ContainerDriver(options)
}

export class ContainerDriver implements Driver {
  readonly kind = 'container' as const
  readonly events: SandboxEvents
  readonly #log: Logger
  readonly #dataDir: string
  readonly #sandboxesDir: string
  readonly #disksDir: string
  readonly #agentDir: string
  readonly #uidBase: number
  readonly #cgroupParent: string
  readonly #readyTimeoutMs: number
  readonly #templateReadyTimeoutMs: number
  readonly #useSeccomp: boolean
  readonly #hostname: string
  readonly #templates: TemplateRegistry
  readonly #templatesDir: string
  readonly #buildsDir: string
  readonly #launches: Semaphore
  readonly #network: SandboxNetwork | undefined
  #setup:
    Promise<{ hostNode: HostNode; cgroupVersion: CgroupVersion; seccompPath?: string }> | undefined

  constructor(options: ContainerDriverOptions) {
    this.#log = options.log.child({ component: 'runtime.container' })
    this.events = new SandboxEvents(this.#log)
    this.#dataDir = options.dataDir
    this.#sandboxesDir = join(options.dataDir, 'sandboxes')
    this.#disksDir = join(options.dataDir, 'disks')
    this.#agentDir = options.agentDir ?? defaultAgentDir()
    this.#uidBase = options.uidBase ?? 100_000
    this.#cgroupParent = options.cgroupParent ?? 'sandcell'
    this.#readyTimeoutMs = options.readyTimeoutMs ?? 10_000
    this.#templateReadyTimeoutMs = options.templateReadyTimeoutMs ?? 600_000
    this.#useSeccomp = options.seccomp ?? true
    this.#hostname = options.hostname ?? 'sandbox'
    this.#launches = new Semaphore(options.maxConcurrentCreates ?? availableParallelism())
    this.#network = options.network
    this.#templatesDir = options.templatesDir ?? join(options.dataDir, 'templates')
    this.#buildsDir = options.buildsDir ?? join(options.dataDir, 'builds')
    this.#templates = new TemplateRegistry({
      templatesDir: this.#templatesDir,
      buildsDir: this.#buildsDir,
      uidOffset: this.#uidBase,
      log: this.#log,
    })
  }

  /** Subscribes to lifecycle events of every sandbox this driver creates or adopts. */
  onEvent(listener: SandboxListener): () => void {
    return this.events.on(listener)
  }

  probe(): Promise<ProbeResult> {
    const details: Record<string, string> = {}
    const problems: string[] = []
    if (process.getuid?.() !== 0) {
      problems.push('the container driver must run as root')
    }
    const bwrap = spawnSync('bwrap', ['--version'], { encoding: 'utf8' })
    if (bwrap.status === 0) {
      details.bwrap = bwrap.stdout.trim()
    } else {
      problems.push('bubblewrap (bwrap) is not installed: apt-get install bubblewrap')
    }
    try {
      details.cgroup = `v${detectCgroupVersion()}`
    } catch (err) {
      problems.push((err as Error).message)
    }
    const filesystems = readFileSync('/proc/filesystems', 'utf8')
    for (const fs of ['overlay', 'ext4']) {
      if (!filesystems.includes(`\t${fs}\n`)) {
        problems.push(`the kernel has no ${fs} filesystem`)
      }
    }
    if (!existsSync('/dev/loop-control')) {
      problems.push('no loop devices (/dev/loop-control is missing)')
    }
    for (const problem of [
      agentBundleProblem(this.#agentDir),
      socketPathProblem(sandboxPaths(this.#sandboxesDir, newSandboxId()).agentSocket),
    ]) {
      if (problem !== undefined) {
        problems.push(problem)
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

  async prepareTemplate(
    name: string,
    options: { signal?: AbortSignal; onProgress?: (progress: TemplateProgress) => void } = {},
  ): Promise<void> {
    await this.#templates.prepare(name, options)
  }

  /** One-time host setup shared by every create: dirs, host node, cgroup version, seccomp. */
  #ensureSetup(): Promise<{
    hostNode: HostNode
    cgroupVersion: CgroupVersion
    seccompPath?: string
  }> {
    this.#setup ??= (async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(`the container driver cannot run here: ${probe.reason ?? 'unknown'}`)
      }
      for (const dir of [this.#dataDir, this.#sandboxesDir]) {
        mkdirSync(dir, { recursive: true })
        // bwrap runs as the sandbox's host uid and must traverse down to the sandbox's rootfs.
        chmodSync(dir, 0o711)
      }
      for (const dir of [this.#templatesDir, this.#disksDir]) {
        mkdirSync(dir, { recursive: true })
        // Template files are owned by the sandbox uid range (so they look right inside); only
        // root may reach them on the host, so a process of that uid that got out cannot edit
        // the layers every sandbox shares. The overlay reads them with the mounter's rights.
        chmodSync(dir, 0o700)
      }
      accessSync(this.#agentDir)
      const addons = [
        join(this.#agentDir, 'node_modules/node-pty/build/Release/pty.node'),
        join(this.#agentDir, 'native/sandcell_spawn.node'),
      ].filter((addon) => existsSync(addon))
      const hostNode = await resolveHostNode(addons)
      const cgroupVersion = detectCgroupVersion()
      if (!this.#useSeccomp) {
        return { hostNode, cgroupVersion }
      }
      const seccompPath = join(this.#dataDir, 'seccomp.bpf')
      writeFileSync(seccompPath, buildSeccompFilter())
      return { hostNode, cgroupVersion, seccompPath }
    })()
    this.#setup.catch(() => {
      this.#setup = undefined
    })
    return this.#setup
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const spec = fromSnapshotSpec(requested)
    assertTemplateExists(spec.template, this.#buildsDir)
    validateLimits(spec.limits)
    const clock = new StepTimer()
    const setup = await this.#ensureSetup()
    const template = await this.#templates.prepare(spec.template, options)
    const diskSource =
      spec.fromSnapshot === undefined
        ? await ensureBlankImage(this.#disksDir, spec.limits.diskMiB, this.#uidBase)
        : join(spec.fromSnapshot.dir, snapshotDiskName)
    clock.step('prepare')
    return this.#launches.run(async () => {
      clock.step('queue')
      return this.#launch(spec, setup, template, diskSource, options, clock)
    }, options.signal)
  }

  /** The part of a create that holds one of the launch slots. */
  async #launch(
    spec: SandboxSpec,
    setup: { hostNode: HostNode; cgroupVersion: CgroupVersion; seccompPath?: string },
    template: PreparedTemplate,
    diskSource: string,
    options: { signal?: AbortSignal },
    clock: StepTimer,
  ): Promise<Sandbox> {
    const step = (name: string): void => clock.step(name)
    const id: SandboxId = spec.id ?? newSandboxId()
    const log = this.#log.child({ sandboxId: id })
    const paths = sandboxPaths(this.#sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
    const undo = new CleanupStack()
    let network: SandboxNetworkHandle | undefined
    undo.defer('sandbox leftovers', () => removeContainerLeftovers(paths, cgroup, network))
    try {
      mkdirSync(paths.dir, { mode: 0o711 })
      mkdirSync(paths.runDir, { mode: 0o700 })
      chownSync(paths.runDir, this.#uidBase, this.#uidBase)
      // Each start of a sandbox is a boot of its own, as a VM's would be.
      writeFileSync(paths.bootId, `${randomUUID()}\n`, { mode: 0o644 })
      cgroup.setLimits(toCgroupLimits(spec.limits, spec.background === true))
      step('cgroup')
      network = await acquireNetwork(this.#network, 'container', spec, id)
      if (network !== undefined) {
        // The sandbox's root owns it, so that root inside may point it elsewhere.
        writeFileSync(paths.resolvConf, resolvConfFor(network.slot), {
          mode: 0o644,
        })
        chownSync(paths.resolvConf, this.#uidBase, this.#uidBase)
        step('network')
      }
      mountSandboxRoot(paths, diskSource, template.lowerDirs)
      step('disk')
      const args = buildBwrapArgs({
        rootfs: paths.rootfs,
        runDir: paths.runDir,
        agentDir: this.#agentDir,
        hostNode: setup.hostNode,
        hostBinds: template.hostBinds,
        hostname: this.#hostname,
        nodeFlags: agentNodeFlags,
        withSeccomp: setup.seccompPath !== undefined,
        bootId: paths.bootId,
        ...(network === undefined ? {} : { resolvConf: paths.resolvConf }),
      })
      const launched = await launchSandbox({
        args,
        uidBase: this.#uidBase,
        uidCount,
        cgroup,
        logPath: paths.log,
        seccompPath: setup.seccompPath,
        readyTimeoutMs: this.#readyTimeoutMs,
        ...(network === undefined ? {} : { netnsPath: network.slot.addresses.netnsPath }),
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      })
      step('launch')
      const record = newSandboxRecord({
        id,
        driver: 'container',
        spec,
        agentSocket: paths.agentSocket,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#cgroupParent,
        network,
      })
      const info =
        template.defaults === undefined
          ? record.info
          : { ...record.info, templateDefaults: template.defaults }
      const state = {
        ...record.state,
        bwrapPid: launched.pid,
        bwrapStartTime: launched.startTime,
      }
      writeState(paths, state)
      undo.release()
      const sandbox = guardSandbox(
        new ContainerSandbox({
          info,
          paths,
          cgroup,
          state,
          child: launched.child,
          paused: false,
          log,
          ...(network === undefined ? {} : { network }),
        }),
        { log: this.#log, events: this.events },
      )
      if (template.defaults !== undefined) {
        await startSandboxTemplate(sandbox, template.defaults, {
          readyTimeoutMs: this.#templateReadyTimeoutMs,
          log,
          ...(options.signal === undefined ? {} : { signal: options.signal }),
        })
        step('start')
      }
      const durationMs = clock.elapsedMs()
      log.info({ template: spec.template, durationMs, timings: clock.timings }, 'sandbox created')
      this.events.emit({ type: 'created', sandbox, durationMs })
      return sandbox
    } catch (err) {
      await undo.dispose().catch((cleanupErr: unknown) => {
        log.error({ err: cleanupErr }, 'cleanup after a failed create left something behind')
      })
      throw err
    }
  }

  /**
   * The root filesystem of a template as overlay layers (built when needed): what a template
   * build starts from and stacks its own layers on.
   */
  async templateLayers(
    name: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<PreparedTemplate> {
    assertTemplateExists(name, this.#buildsDir)
    return this.#templates.prepare(name, options)
  }

  /**
   * Copies what a sandbox of this driver changed in its filesystem (its overlay upper directory)
   * to `target`, as a layer that templates can stack. Pause the sandbox first.
   * @returns whether it changed nothing
   */
  captureChanges(
    sandboxId: SandboxId,
    target: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<{ empty: boolean }> {
    return captureUpperDir(sandboxPaths(this.#sandboxesDir, sandboxId), target, options.signal)
  }

  /** Where template builds keep their layers and manifests. */
  get buildsDir(): string {
    return this.#buildsDir
  }

  async adopt(): Promise<Sandbox[]> {
    const setup = await this.#ensureSetup()
    const adopted: Sandbox[] = []
    const known = new Set<string>()
    for (const id of listSandboxDirs(this.#sandboxesDir)) {
      known.add(id)
      const paths = sandboxPaths(this.#sandboxesDir, id)
      const state = readState(paths)
      const cgroup = openCgroup({
        version: state?.cgroupVersion ?? setup.cgroupVersion,
        parent: state?.cgroupParent ?? this.#cgroupParent,
        id,
      })
      const log = this.#log.child({ sandboxId: id })
      const network = adoptNetwork(this.#network, state?.network, id)
      if (state === undefined || !isProcessAlive(state.bwrapPid, state.bwrapStartTime)) {
        log.info('cleaning up the leftovers of a dead sandbox')
        await removeContainerLeftovers(paths, cgroup, network).catch((err: unknown) =>
          log.error({ err }, 'could not clean up a dead sandbox'),
        )
        continue
      }
      const info = adoptedSandboxInfo(id, 'container', state, paths.agentSocket, network)
      const sandbox = guardSandbox(
        new ContainerSandbox({
          info,
          paths,
          cgroup,
          state,
          paused: cgroup.isFrozen(),
          log,
          ...(network === undefined ? {} : { network }),
        }),
        { log: this.#log, events: this.events },
      )
      adopted.push(sandbox)
      this.events.emit({ type: 'adopted', sandbox })
    }
    // Cgroups whose sandbox directory is gone: a crash between the two; kill and remove them.
    for (const id of listCgroups(setup.cgroupVersion, this.#cgroupParent)) {
      if (!known.has(id)) {
        const cgroup = openCgroup({ version: setup.cgroupVersion, parent: this.#cgroupParent, id })
        await cgroup.killAll()
        await cgroup.remove()
      }
    }
    return adopted
  }

  /** Removes the parent cgroup when no sandbox is left in it; live sandboxes are untouched. */
  async close(): Promise<void> {
    const setup = await this.#setup?.catch(() => undefined)
    if (setup !== undefined) {
      removeCgroupParent(setup.cgroupVersion, this.#cgroupParent)
    }
  }
}
