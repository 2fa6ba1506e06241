/**
 * The microVM driver that QEMU and Firecracker fill in: the `Driver` contract once, around a
 * `Vmm` that knows only its own process, control API and snapshot files. A VM runs the template
 * as a read-only image under a per-VM writable disk, its VMM and an agent relay detached in the
 * VM's cgroup and network namespace; creates restore a snapshot of the template booted once
 * (a built template's with its start command already running, as on E2B).
 */
import {
  assertTemplateExists,
  ensureArtifact,
  ensureGuestBase,
  ensureTemplateRootfs,
  hashParts,
  isBuildId,
  readBuiltTemplate,
  templateStatuses,
  type BuildContext,
  type TemplateDefaults,
  type TemplateRootfs,
} from '@sandcell/images'
import { createAgentConnection } from '@sandcell/envd-client'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import {
  DriverError,
  InvalidArgumentError,
  NotFoundError,
  StepTimer,
  errorMessage,
  newSandboxId,
  type Logger,
  type SandboxId,
} from '@sandcell/shared'
import type {
  Driver,
  ProbeResult,
  Sandbox,
  SandboxSpec,
  TemplateProgress,
  TemplateStatus,
} from '../../driver.js'
import { ensureBlankImage } from '../../disks/blank-image.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import { createCgroup, detectCgroupVersion, removeCgroupParent } from '../../os/cgroups.js'
import { sparseCopy } from '../../os/native.js'
import { SandboxEvents, type SandboxListener } from '../../sandbox-events.js'
import { acquireNetwork, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
import { startSandboxTemplate, startTemplate } from '../../template-start.js'
import { agentBundleProblem, socketPathProblem } from '../host-checks.js'
import { adoptVmSandboxes } from './adopt-vms.js'
import { isSilentGuest } from './guest-ctl.js'
import { toProbeResult } from './guest-setup.js'
import { specFromSnapshot, validateVmLimits, type MicroVmSettings } from './microvm-settings.js'
import { adoptedSandboxInfo, writeJsonFileAtomic } from '../persisted-sandbox.js'
import { newVmRecord, snapshotDiskFile } from './persisted-vm.js'
import { PromiseCache } from './promise-cache.js'
import {
  templateDiskMiB,
  templateMemoryMiB,
  undoneOnFailure,
  withTemplateVmCgroup,
} from './vm-launch.js'
import { vmCgroupLimits } from './vm-sandbox.js'
import { bootVm, prepareVmDisk, restoreVm } from './vm-start.js'
import type {
  MicroVmSetup,
  StartingVm,
  Vmm,
  VmmSandboxOptions,
  VmmTypes,
  VmShapeOf,
  VmSource,
} from './vmm.js'

/** What every VM of one template starts from. */
interface TemplateVm<T extends VmmTypes> {
  shape: VmShapeOf<T>
  /** The template's booted-once snapshot, when the VMM takes them. */
  snapshotDir?: string | undefined
  /** A built template's env, user, workdir and start command. */
  defaults?: TemplateDefaults | undefined
}

export class MicroVmDriver<T extends VmmTypes> implements Driver {
  readonly kind: T['kind']
  readonly events: SandboxEvents
  readonly #vm: MicroVmSettings
  readonly #vmm: Vmm<T>
  readonly #log: Logger
  readonly #setup = new PromiseCache<'host', MicroVmSetup<T['setup']>>()
  readonly #templateVms = new PromiseCache<string, TemplateVm<T>>()

  constructor(settings: MicroVmSettings, vmm: Vmm<T>) {
    this.kind = vmm.kind
    this.#vm = settings
    this.#vmm = vmm
    this.#log = settings.log
    this.events = new SandboxEvents(this.#log)
  }

  /** Subscribes to lifecycle events of every sandbox this driver creates or adopts. */
  onEvent(listener: SandboxListener): () => void {
    return this.events.on(listener)
  }

  probe(): Promise<ProbeResult> {
    const { problems, details } = this.#vmm.probe()
    if (process.getuid?.() !== 0) {
      problems.push(`the ${this.kind} driver must run as root (cgroups, network namespaces)`)
    }
    try {
      details.cgroup = `v${detectCgroupVersion()}`
    } catch (err) {
      problems.push(errorMessage(err))
    }
    for (const problem of [
      agentBundleProblem(this.#vm.agentDir),
      socketPathProblem(this.#vmm.paths(this.#vm.sandboxesDir, newSandboxId()).agentSocket),
    ]) {
      if (problem !== undefined) {
        problems.push(problem)
      }
    }
    return Promise.resolve(toProbeResult(problems, details))
  }

  templates(): Promise<TemplateStatus[]> {
    return Promise.resolve(templateStatuses(this.#vm.templatesDir))
  }

  /** Host setup shared by every create: tools, kernel, initramfs, the sandcell image, the VMM's. */
  protected ensureSetup(context: Partial<BuildContext> = {}): Promise<MicroVmSetup<T['setup']>> {
    return this.#setup.get('host', async () => {
      const probe = await this.probe()
      if (!probe.usable) {
        throw new DriverError(
          `the ${this.kind} driver cannot run here: ${probe.reason ?? 'unknown'}`,
        )
      }
      for (const dir of [
        this.#vm.dataDir,
        this.#vm.sandboxesDir,
        this.#vm.disksDir,
        this.#vm.imagesDir,
      ]) {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      }
      const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
      const guest = await ensureGuestBase(build, this.#vm.agentDir)
      const vmm = await this.#vmm.setUp(guest, build)
      return {
        cgroupVersion: detectCgroupVersion(),
        kernel: guest.kernel.vmlinux,
        initramfs: guest.initramfs,
        sandcellImage: guest.sandcellImage,
        vmm,
      }
    })
  }

  /** The template's VM shape, and its booted-once snapshot when template snapshots are on. */
  #templateVm(template: string, context: Partial<BuildContext> = {}): Promise<TemplateVm<T>> {
    return this.#templateVms.get(template, async () => {
      const setup = await this.ensureSetup(context)
      const rootfs = await ensureTemplateRootfs(this.#vm, template, context)
      const { defaults } = rootfs
      const shape = this.#vmm.shape(setup, rootfs.rootfsImage)
      if (!this.#vmm.templateSnapshots) {
        return { shape, defaults }
      }
      const snapshotDir = await this.#ensureTemplateSnapshot(template, rootfs, {
        shape,
        setup,
        context,
      })
      return { shape, snapshotDir, defaults }
    })
  }

  async prepareTemplate(
    name: string,
    options: { signal?: AbortSignal; onProgress?: (progress: TemplateProgress) => void } = {},
  ): Promise<void> {
    assertTemplateExists(name, this.#vm.buildsDir)
    await this.#templateVm(name, options)
  }

  /**
   * Boots the template once on a blank disk, waits for its agent, starts a built template's
   * start command until it is ready, and has the VMM save it: every create restores that
   * snapshot instead of booting, its start command already running.
   */
  #ensureTemplateSnapshot(
    template: string,
    { defaults, artifactsDir }: TemplateRootfs,
    {
      shape,
      setup,
      context,
    }: {
      shape: VmShapeOf<T>
      setup: MicroVmSetup<T['setup']>
      context: Partial<BuildContext>
    },
  ): Promise<string> {
    // A built template's snapshot holds its image (in the shape) and what its agent and start
    // command were given: builds that share both share it, whatever their build ids. One short
    // hash, as the template VM's sockets are inside the snapshot's directory.
    const key =
      defaults === undefined
        ? this.#vmm.templateSnapshotKey(template, shape, setup)
        : `built-${hashParts([this.#vmm.templateSnapshotKey('built', shape, setup), defaults])}`
    const build: BuildContext = { imagesDir: this.#vm.imagesDir, log: this.#log, ...context }
    return ensureArtifact(join(artifactsDir, 'snapshots'), key, build, async (dir) => {
      build.log.info({ template }, 'booting the template VM once to snapshot it')
      build.onProgress?.({
        phase: 'template-snapshot',
        done: 0,
        total: 0,
        message: `booting ${template} to snapshot it`,
      })
      const startedMs = performance.now()
      const paths = this.#vmm.templatePaths(dir)
      mkdirSync(paths.dir, { mode: 0o700 })
      const scratch = {
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        memoryMiB: shape.memoryMiB,
        overheadMiB: this.#vmm.overheadMiB(shape),
        dir: paths.dir,
      }
      await withTemplateVmCgroup(scratch, async (cgroup) => {
        sparseCopy(await ensureBlankImage(this.#vm.disksDir, templateDiskMiB, 0), paths.disk)
        const vm: StartingVm<T> = {
          paths,
          shape,
          setup,
          cgroup,
          netnsPath: undefined,
          signal: context.signal,
          step: () => undefined,
        }
        const { vmm } = await bootVm(this.#vmm, vm, {
          kind: 'boot',
          pids: 1024,
          memoryMiB: templateMemoryMiB,
          templateDir: dir,
        })
        if (defaults !== undefined) {
          await this.#startInTemplateVm(paths.agentSocket, defaults, template, context.signal)
        }
        await this.#vmm.saveTemplate(vm, { dir, template, vmm, startedMs })
        build.log.info(
          { template, durationMs: Math.round(performance.now() - startedMs) },
          'template VM snapshotted',
        )
      })
    })
  }

  /**
   * Starts a built template in the template VM over a connection of its own, then closes it:
   * the start command goes on in the guest (its agent keeps it) with no host stream to it, as
   * no host end of a connection exists in the copies restored from the snapshot.
   */
  async #startInTemplateVm(
    agentSocket: string,
    defaults: TemplateDefaults,
    template: string,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const connection = createAgentConnection(agentSocket)
    try {
      await startTemplate(connection, defaults, {
        readyTimeoutMs: this.#vm.templateReadyTimeoutMs,
        log: this.#log.child({ template }),
        ...(signal === undefined ? {} : { signal }),
      })
    } finally {
      connection.close()
    }
  }

  async create(requested: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const spec = specFromSnapshot(requested, this.kind)
    assertTemplateExists(spec.template, this.#vm.buildsDir)
    validateVmLimits(spec.limits, this.#vm.vmMemoryMiB)
    const clock = new StepTimer()
    const setup = await this.ensureSetup()
    const { shape, source, defaults } = await this.#source(spec, setup, options.signal)
    if (spec.limits.memoryMiB > shape.memoryMiB) {
      throw new InvalidArgumentError(`memoryMiB must be at most ${shape.memoryMiB} for this VM`)
    }
    clock.step('prepare')
    const launch = (): Promise<Sandbox> =>
      this.#launch(spec, { setup, shape, source, defaults, signal: options.signal, clock })
    return this.#vm.launches.run(async () => {
      clock.step('queue')
      try {
        return await launch()
      } catch (err) {
        // Now and then (about one restore in thirty under TCG) a restored guest's control port
        // stays silent; the VM is gone by now, and the same files restore fine a second time.
        if (source.kind === 'boot' || options.signal?.aborted === true || !isSilentGuest(err)) {
          throw err
        }
        this.#log.warn({ err: errorMessage(err) }, 'restored guest did not answer; restoring again')
        return launch()
      }
    }, options.signal)
  }

  /**
   * Where a create's VM comes from, its shape and a built template's defaults: a sandbox's
   * snapshot (restored, or booted on when it kept no memory), or the template.
   */
  async #source(
    spec: SandboxSpec,
    setup: MicroVmSetup<T['setup']>,
    signal: AbortSignal | undefined,
  ): Promise<{ shape: VmShapeOf<T>; source: VmSource; defaults: TemplateDefaults | undefined }> {
    const snapshot = spec.fromSnapshot
    if (snapshot !== undefined && !snapshot.memory) {
      // A disk without memory (a shut-down sandbox's): the template's VM boots on it.
      const vm = await this.#templateVm(spec.template, signal === undefined ? {} : { signal })
      const disk = join(snapshot.dir, snapshotDiskFile)
      if (!existsSync(disk)) {
        throw new NotFoundError(`snapshot files are missing in ${snapshot.dir}`)
      }
      return { shape: vm.shape, source: { kind: 'boot', disk }, defaults: vm.defaults }
    }
    if (snapshot !== undefined) {
      const shape = this.#vmm.savedShape(snapshot.dir, setup)
      if (shape === undefined) {
        throw new NotFoundError(`snapshot files are missing in ${snapshot.dir}`)
      }
      const defaults = isBuildId(spec.template)
        ? readBuiltTemplate(this.#vm.buildsDir, spec.template)?.defaults
        : undefined
      return { shape, source: { kind: 'snapshot', dir: snapshot.dir }, defaults }
    }
    const vm = await this.#templateVm(spec.template, signal === undefined ? {} : { signal })
    return {
      shape: vm.shape,
      source:
        vm.snapshotDir === undefined ? { kind: 'boot' } : { kind: 'template', dir: vm.snapshotDir },
      defaults: vm.defaults,
    }
  }

  /** The part of a create that holds one of the launch slots. */
  async #launch(
    spec: SandboxSpec,
    from: {
      setup: MicroVmSetup<T['setup']>
      shape: VmShapeOf<T>
      source: VmSource
      defaults: TemplateDefaults | undefined
      signal: AbortSignal | undefined
      clock: StepTimer
    },
  ): Promise<Sandbox> {
    const { setup, shape, source, defaults, clock } = from
    const step = (name: string): void => clock.step(name)
    const id: SandboxId = spec.id ?? newSandboxId()
    const log = this.#log.child({ sandboxId: id })
    const paths = this.#vmm.paths(this.#vm.sandboxesDir, id)
    const cgroup = createCgroup({ version: setup.cgroupVersion, parent: this.#vm.cgroupParent, id })
    const { limits } = spec
    const held: { network?: SandboxNetworkHandle } = {}
    const { info, state, child } = await undoneOnFailure({ paths, cgroup, log, held }, async () => {
      mkdirSync(paths.dir, { mode: 0o700 })
      cgroup.setLimits(
        vmCgroupLimits(limits, this.#vmm.overheadMiB(shape), spec.background === true),
      )
      step('cgroup')
      const network = await acquireNetwork(this.#vm.network, 'vm', spec, id)
      if (network !== undefined) {
        held.network = network
        step('network')
      }
      const start = await prepareVmDisk(paths.disk, source, limits, this.#vm.disksDir)
      step('disk')
      const vm: StartingVm<T> = {
        paths,
        shape,
        setup,
        cgroup,
        netnsPath: network?.slot.addresses.netnsPath,
        signal: from.signal,
        step,
      }
      const { vmm, relay } =
        start.kind === 'boot'
          ? await bootVm(this.#vmm, vm, start)
          : await restoreVm(this.#vmm, vm, start)
      await this.#vmm.whenReady?.(vm, start)
      if (start.kind === 'boot') {
        step('boot')
      }
      const record = newVmRecord({
        id,
        driver: this.kind,
        spec,
        agentSocket: paths.agentSocket,
        relay,
        cgroupVersion: setup.cgroupVersion,
        cgroupParent: this.#vm.cgroupParent,
        network,
      })
      const state = this.#vmm.persistedState(record.state, vmm, shape)
      writeJsonFileAtomic(paths.state, state)
      const info =
        defaults === undefined ? record.info : { ...record.info, templateDefaults: defaults }
      return { info, state, child: vmm.child }
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
    // A restored VM's start command has been running since its snapshot; a booted one's not yet.
    if (defaults !== undefined && source.kind === 'boot') {
      await startSandboxTemplate(sandbox, defaults, {
        readyTimeoutMs: this.#vm.templateReadyTimeoutMs,
        log,
        ...(from.signal === undefined ? {} : { signal: from.signal }),
      })
      step('start')
    }
    const durationMs = clock.elapsedMs()
    const { timings } = clock
    log.info(
      { template: spec.template, source: source.kind, durationMs, timings },
      'sandbox created',
    )
    this.events.emit({ type: 'created', sandbox, durationMs })
    return sandbox
  }

  #sandbox(options: Omit<VmmSandboxOptions<T>, 'overheadMiB' | 'guestTimeoutMs'>): Sandbox {
    const { shape } = options.state
    return this.#vmm.sandbox({
      ...options,
      overheadMiB: this.#vmm.overheadMiB(shape),
      guestTimeoutMs: this.#vmm.readyTimeoutMs(shape),
    })
  }

  adopt(): Promise<Sandbox[]> {
    return adoptVmSandboxes(this.#vmm, {
      sandboxesDir: this.#vm.sandboxesDir,
      cgroupParent: this.#vm.cgroupParent,
      log: this.#log,
      events: this.events,
      network: this.#vm.network,
      sandbox: ({ id, paths, state, cgroup, log, network }) =>
        this.#sandbox({
          info: adoptedSandboxInfo(id, this.kind, state, paths.agentSocket, network),
          paths,
          cgroup,
          state,
          paused: state.paused,
          log,
          ...(network === undefined ? {} : { network }),
        }),
    })
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
