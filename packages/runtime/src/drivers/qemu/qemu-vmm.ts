/**
 * QEMU's `microvm` machine as the VMM of the microVM driver: its command line, restores through
 * QMP (`-incoming defer`), the balloon, and the template VM whose RAM is a shared file that
 * clones map privately (`x-ignore-shared`), which is what makes creates fast under TCG.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, renameSync, truncateSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { DriverError, FailedPreconditionError } from '@sandcell/shared'
import { createAgentConnection, runCommand } from '@sandcell/envd-client'
import { hashParts, type GuestBase } from '@sandcell/images'
import type { MicroVmSettings } from '../microvm/microvm-settings.js'
import type { PersistedVmBase } from '../microvm/persisted-vm.js'
import { templateDiskMiB, templateMemoryMiB } from '../microvm/vm-launch.js'
import { waitForExit, type HostProcess, type StartedVmm } from '../microvm/vm-process.js'
import type {
  MicroVmSetup,
  StartingVm,
  Vmm,
  VmmCommand,
  VmmSandboxOptions,
  VmStart,
} from '../microvm/vmm.js'
import {
  buildKernelCmdline,
  buildQemuArgs,
  parseTscKhz,
  type Accelerator,
  type VmMemory,
  type VmShape,
} from './qemu-args.js'
import { probeQemuTools, qemuIdentity, resolveAccelerator } from './qemu-host.js'
import { QemuSandbox } from './qemu-sandbox.js'
import { withQmp } from './qmp-client.js'
import { loadVmState, saveVmState, setBalloon, waitForBalloon } from './vm-control.js'
import {
  qemuManifests,
  persistedVmStateSchema,
  snapshotFiles,
  vmSandboxPaths,
  type PersistedVmState,
  type VmSandboxPaths,
} from './vm-state.js'

export interface QemuVmmOptions {
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

/** What the qemu driver learns of the host once. */
export interface QemuSetup {
  qemuIdentity: string
  accel: Accelerator
  /** The host's TSC frequency, handed to a TCG guest (it cannot measure it). */
  tscKhz: number | undefined
}

export interface QemuTypes {
  kind: 'qemu'
  setup: QemuSetup
  paths: VmSandboxPaths
  state: PersistedVmState
}

/** Bumped when what a template snapshot holds changes. */
const templateSnapshotVersion = 2
/** Host memory for QEMU on top of the guest's: its own heap and, under TCG, translated code. */
const overheadMiB = { kvm: 64, tcg: 192 } as const
const tcgCacheMiB = 64
/** The template VM's RAM in its snapshot directory: shared while it runs, mapped by clones. */
const templateMemoryFile = 'memory'

export class QemuVmm implements Vmm<QemuTypes> {
  readonly kind = 'qemu' as const
  readonly name = 'QEMU'
  readonly processName = 'qemu-system'
  readonly templateSnapshots: boolean
  readonly stateSchema = persistedVmStateSchema
  readonly #vm: MicroVmSettings
  readonly #readyTimeoutMs: number | undefined
  readonly #accel: Accelerator | 'auto'
  readonly #binary: string
  readonly #vcpus: number

  constructor(settings: MicroVmSettings, options: QemuVmmOptions) {
    this.#vm = settings
    this.#readyTimeoutMs = options.readyTimeoutMs
    this.#accel = options.accel ?? 'auto'
    this.#binary = options.qemuBinary ?? 'qemu-system-x86_64'
    this.#vcpus = options.vcpus ?? availableParallelism()
    this.templateSnapshots = options.templateSnapshots ?? true
  }

  probe(): { problems: string[]; details: Record<string, string> } {
    const { problems, details } = probeQemuTools(this.#binary)
    details.kvm = existsSync('/dev/kvm') ? 'present' : 'absent (TCG only)'
    details.accel = this.#accel
    return { problems, details }
  }

  async setUp(guest: GuestBase): Promise<QemuSetup> {
    const identity = qemuIdentity(this.#binary)
    const accel = await resolveAccelerator({
      wanted: this.#accel,
      binary: this.#binary,
      qemuIdentity: identity,
      kernel: guest.kernel.vmlinux,
      initramfs: guest.initramfs,
      imagesDir: this.#vm.imagesDir,
      log: this.#vm.log,
    })
    const tscKhz = accel === 'tcg' ? parseTscKhz(readFileSync('/proc/cpuinfo', 'utf8')) : undefined
    this.#vm.log.info(
      { accel, kernel: guest.kernel.release, qemuIdentity: identity },
      'qemu driver ready',
    )
    return { qemuIdentity: identity, accel, tscKhz }
  }

  shape(setup: MicroVmSetup<QemuSetup>, rootfsImage: string): VmShape {
    return {
      accel: setup.vmm.accel,
      vcpus: this.#vcpus,
      memoryMiB: this.#vm.vmMemoryMiB,
      kernel: setup.kernel,
      initramfs: setup.initramfs,
      rootfsImage,
      sandcellImage: setup.sandcellImage,
      tcgCacheMiB,
    }
  }

  templateSnapshotKey(template: string, shape: VmShape, setup: MicroVmSetup<QemuSetup>): string {
    const { qemuIdentity: identity, tscKhz } = setup.vmm
    return `${template}-${hashParts([templateSnapshotVersion, identity, shape, templateMemoryMiB, templateDiskMiB, tscKhz])}`
  }

  savedShape(dir: string, setup: MicroVmSetup<QemuSetup>): VmShape | undefined {
    const manifest = qemuManifests.read(dir)
    if (manifest !== undefined && manifest.qemuIdentity !== setup.vmm.qemuIdentity) {
      throw new FailedPreconditionError(
        `snapshot ${dir} was saved by another QEMU build (${manifest.qemuIdentity}); microVM states load only into the same build`,
      )
    }
    return manifest?.shape
  }

  paths(sandboxesDir: string, id: string): VmSandboxPaths {
    return vmSandboxPaths(sandboxesDir, id)
  }

  templatePaths(dir: string): VmSandboxPaths {
    return { ...vmSandboxPaths(dir, 'vm'), disk: join(dir, snapshotFiles.disk) }
  }

  ctl(paths: VmSandboxPaths): string {
    return paths.ctlSocket
  }

  overheadMiB(shape: VmShape): number {
    return overheadMiB[shape.accel]
  }

  readyTimeoutMs(shape: VmShape): number {
    return this.#readyTimeoutMs ?? (shape.accel === 'tcg' ? 60_000 : 15_000)
  }

  command(vm: StartingVm<QemuTypes>, start: VmStart): VmmCommand {
    const { shape, paths } = vm
    if (start.kind === 'boot') {
      const cmdline = buildKernelCmdline({
        accel: shape.accel,
        ...(vm.setup.vmm.tscKhz === undefined ? {} : { tscKhz: vm.setup.vmm.tscKhz }),
        clockNs: BigInt(Date.now()) * 1_000_000n,
        seedHex: randomBytes(32).toString('hex'),
        pids: start.pids,
      })
      const memory: VmMemory =
        start.templateDir === undefined
          ? { path: this.#blankMemory(shape.memoryMiB), shared: false }
          : { path: join(start.templateDir, templateMemoryFile), shared: true }
      return {
        binary: this.#binary,
        args: buildQemuArgs({ shape, paths, memory, cmdline, incoming: false }),
        apiSocket: paths.qmpSocket,
      }
    }
    const { from } = start
    const memory: VmMemory = {
      path:
        from.kind === 'template'
          ? join(from.dir, templateMemoryFile)
          : this.#blankMemory(shape.memoryMiB),
      shared: false,
    }
    return {
      binary: this.#binary,
      // The kernel command line is not used on a restore; only the device line matters.
      args: buildQemuArgs({ shape, paths, memory, cmdline: 'restored', incoming: true }),
      apiSocket: paths.qmpSocket,
      incomingState: join(from.dir, snapshotFiles.state),
    }
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

  /** A boot needs nothing more (the command line boots); a restore loads the state over QMP. */
  async start(vm: StartingVm<QemuTypes>, start: VmStart): Promise<void> {
    if (start.kind === 'boot') {
      return
    }
    await withQmp(
      vm.paths.qmpSocket,
      async (qmp) => {
        await loadVmState(qmp, start.from.kind === 'template')
        vm.step('restore')
        if (start.growToBytes !== undefined) {
          await qmp.execute('block_resize', { device: 'disk', size: start.growToBytes })
        }
        await setBalloon(qmp, start.memoryMiB)
        await qmp.execute('cont')
      },
      { timeoutMs: this.readyTimeoutMs(vm.shape) },
    )
  }

  /**
   * A booted VM gives what is beyond its memory limit to the balloon. Under TCG every new QEMU
   * translates the guest's code afresh: one command now makes the first one of the caller take
   * a few hundred ms instead of a second or more.
   */
  async whenReady(vm: StartingVm<QemuTypes>, start: VmStart): Promise<void> {
    if (start.kind === 'boot') {
      await withQmp(vm.paths.qmpSocket, (qmp) => setBalloon(qmp, start.memoryMiB))
    } else if (vm.shape.accel === 'tcg') {
      await warmUpAgent(vm.paths.agentSocket, 1, 'user')
      vm.step('warm-up')
    }
  }

  /**
   * Warms the agent up, shrinks the balloon to the template size and saves the device state
   * only (`x-ignore-shared`): clones map the RAM file privately and load a few dozen KiB.
   */
  async saveTemplate(
    vm: StartingVm<QemuTypes>,
    saved: { dir: string; template: string; vmm: StartedVmm; startedMs: number },
  ): Promise<void> {
    await warmUpAgent(vm.paths.agentSocket, 3)
    await withQmp(
      vm.paths.qmpSocket,
      async (qmp) => {
        await setBalloon(qmp, templateMemoryMiB)
        if (!(await waitForBalloon(qmp, templateMemoryMiB, 120_000))) {
          throw new DriverError(
            'the template VM did not give its memory back to the balloon in time',
          )
        }
        await qmp.execute('stop')
        await saveVmState(qmp, join(saved.dir, snapshotFiles.state), true)
        await qmp.execute('quit').catch(() => undefined)
      },
      { timeoutMs: 180_000 },
    )
    await waitForExit(saved.vmm, 2000, 10)
    writeFileSync(
      join(saved.dir, 'template.json'),
      JSON.stringify(
        {
          template: saved.template,
          shape: vm.shape,
          bootMs: Math.round(performance.now() - saved.startedMs),
        },
        null,
        2,
      ),
    )
  }

  persistedState(base: PersistedVmBase, vmm: HostProcess, shape: VmShape): PersistedVmState {
    return { ...base, qemu: { pid: vmm.pid, startTime: vmm.startTime }, shape }
  }

  process(state: PersistedVmState): HostProcess {
    return state.qemu
  }

  sandbox(options: VmmSandboxOptions<QemuTypes>): QemuSandbox {
    return new QemuSandbox({ ...options, qemuIdentity: qemuIdentity(this.#binary) })
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
