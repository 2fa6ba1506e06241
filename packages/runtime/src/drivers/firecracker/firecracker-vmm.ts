/**
 * Firecracker (KVM only) as the VMM of the microVM driver, configured through its HTTP API: the
 * guest's control port over vsock, the VM directory as Firecracker's working directory (the
 * relative paths a snapshot records then resolve to each clone's own files), full snapshots
 * whose memory file every clone maps privately.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, renameSync, symlinkSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { FailedPreconditionError } from '@sandcell/shared'
import type { GuestChannel } from '../microvm/guest-ctl.js'
import { hashParts } from '@sandcell/images'
import { missingTools } from '../microvm/guest-setup.js'
import type { MicroVmSettings } from '../microvm/microvm-settings.js'
import type { PersistedVmBase } from '../microvm/persisted-vm.js'
import { waitForExit, type HostProcess, type StartedVmm } from '../microvm/vm-process.js'
import type {
  MicroVmSetup,
  StartingVm,
  Vmm,
  VmmCommand,
  VmmSandboxOptions,
  VmStart,
} from '../microvm/vmm.js'
import { FirecrackerApi } from './firecracker-api.js'
import { FirecrackerSandbox, ctlChannel, growAndBalloon } from './firecracker-sandbox.js'
import {
  balloonMiB,
  configureAndBoot,
  firecrackerBootArgs,
  firecrackerVmPaths,
  firecrackerManifests,
  persistedFirecrackerStateSchema,
  snapshotFiles,
  vmFiles,
  type FirecrackerShape,
  type FirecrackerVmPaths,
  type PersistedFirecrackerState,
} from './firecracker-vm.js'

export interface FirecrackerVmmOptions {
  /** The `firecracker` binary. */
  firecrackerBinary: string
  /** @default 15000 */
  readyTimeoutMs?: number
  /** @default the host's cores (Firecracker takes 1 or an even count) */
  vcpus?: number
}

/** What the firecracker driver learns of the host once. */
export interface FirecrackerSetup {
  /** `firecracker --version`: its snapshots load only into a compatible version. */
  version: string
}

export interface FirecrackerTypes {
  kind: 'firecracker'
  setup: FirecrackerSetup
  paths: FirecrackerVmPaths
  state: PersistedFirecrackerState
}

const templateSnapshotVersion = 1
/** Firecracker's own memory is small (≤ 5 MiB by its specification) plus page tables. */
const overheadMiB = 32

/** Firecracker accepts 1 or an even number of vCPUs. */
function firecrackerVcpus(wanted: number): number {
  return wanted <= 1 ? 1 : wanted - (wanted % 2)
}

export class FirecrackerVmm implements Vmm<FirecrackerTypes> {
  readonly kind = 'firecracker' as const
  readonly name = 'Firecracker'
  readonly processName = 'firecracker'
  readonly templateSnapshots = true
  readonly stateSchema = persistedFirecrackerStateSchema
  readonly #vm: MicroVmSettings
  readonly #binary: string
  readonly #readyTimeoutMs: number
  readonly #vcpus: number

  constructor(settings: MicroVmSettings, options: FirecrackerVmmOptions) {
    this.#vm = settings
    this.#binary = options.firecrackerBinary
    this.#readyTimeoutMs = options.readyTimeoutMs ?? 15_000
    this.#vcpus = firecrackerVcpus(options.vcpus ?? availableParallelism())
  }

  #version(): string {
    return execFileSync(this.#binary, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? ''
  }

  probe(): { problems: string[]; details: Record<string, string> } {
    const details: Record<string, string> = {}
    const problems: string[] = []
    try {
      details.firecracker = this.#version()
    } catch {
      problems.push(`${this.#binary} does not run: install Firecracker and configure its path`)
    }
    if (!existsSync('/dev/kvm')) {
      problems.push('Firecracker needs KVM and this host has no /dev/kvm')
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
    return { problems, details }
  }

  setUp(): Promise<FirecrackerSetup> {
    return Promise.resolve({ version: this.#version() })
  }

  shape(setup: MicroVmSetup<FirecrackerSetup>, rootfsImage: string): FirecrackerShape {
    return {
      vcpus: this.#vcpus,
      memoryMiB: this.#vm.vmMemoryMiB,
      kernel: setup.kernel,
      initramfs: setup.initramfs,
      rootfsImage,
      sandcellImage: setup.sandcellImage,
    }
  }

  templateSnapshotKey(
    template: string,
    shape: FirecrackerShape,
    setup: MicroVmSetup<FirecrackerSetup>,
  ): string {
    return `fc-${template}-${hashParts([templateSnapshotVersion, setup.vmm.version, shape])}`
  }

  savedShape(dir: string, setup: MicroVmSetup<FirecrackerSetup>): FirecrackerShape | undefined {
    const manifest = firecrackerManifests.read(dir)
    if (manifest !== undefined && manifest.firecrackerVersion !== setup.vmm.version) {
      throw new FailedPreconditionError(
        `snapshot ${dir} was saved by ${manifest.firecrackerVersion}, not ${setup.vmm.version}`,
      )
    }
    return manifest?.shape
  }

  paths(sandboxesDir: string, id: string): FirecrackerVmPaths {
    return firecrackerVmPaths(sandboxesDir, id)
  }

  templatePaths(dir: string): FirecrackerVmPaths {
    return firecrackerVmPaths(dir, 'vm')
  }

  ctl(paths: FirecrackerVmPaths): GuestChannel {
    return ctlChannel(paths)
  }

  overheadMiB(): number {
    return overheadMiB
  }

  readyTimeoutMs(): number {
    return this.#readyTimeoutMs
  }

  command(vm: StartingVm<FirecrackerTypes>): VmmCommand {
    return {
      binary: this.#binary,
      args: ['--api-sock', vm.paths.apiSocket],
      apiSocket: vm.paths.apiSocket,
      cwd: vm.paths.dir,
    }
  }

  /** Configures and boots the VM, or loads the snapshot, resumes it and sets balloon and disk. */
  async start(vm: StartingVm<FirecrackerTypes>, start: VmStart): Promise<void> {
    const { paths, shape } = vm
    // The links the VM's relative drive paths resolve through.
    symlinkSync(shape.rootfsImage, join(paths.dir, vmFiles.rootfs))
    symlinkSync(shape.sandcellImage, join(paths.dir, vmFiles.sandcell))
    const api = new FirecrackerApi(paths.apiSocket, { timeoutMs: this.#readyTimeoutMs })
    try {
      if (start.kind === 'boot') {
        await configureAndBoot(api, {
          shape,
          dir: paths.dir,
          memoryMiB: start.memoryMiB,
          bootArgs: firecrackerBootArgs({
            clockNs: BigInt(Date.now()) * 1_000_000n,
            seedHex: randomBytes(32).toString('hex'),
            pids: start.pids,
          }),
        })
        return
      }
      await api.loadSnapshot({
        snapshot_path: join(start.from.dir, snapshotFiles.state),
        mem_backend: {
          backend_type: 'File',
          backend_path: join(start.from.dir, snapshotFiles.memory),
        },
        resume_vm: true,
      })
    } finally {
      await api.close()
    }
    await growAndBalloon(paths, balloonMiB(shape, start.memoryMiB), start.growToBytes)
  }

  /** Pauses the template VM, saves a full snapshot, kills it and moves its disk beside. */
  async saveTemplate(
    vm: StartingVm<FirecrackerTypes>,
    saved: { dir: string; vmm: StartedVmm },
  ): Promise<void> {
    const api = new FirecrackerApi(vm.paths.apiSocket, { timeoutMs: 300_000 })
    try {
      await api.pause()
      await api.createSnapshot({
        snapshot_path: join(saved.dir, snapshotFiles.state),
        mem_file_path: join(saved.dir, snapshotFiles.memory),
        snapshot_type: 'Full',
      })
    } finally {
      await api.close()
    }
    process.kill(saved.vmm.pid, 'SIGKILL')
    await waitForExit(saved.vmm, 1000, 5)
    renameSync(vm.paths.disk, join(saved.dir, snapshotFiles.disk))
  }

  persistedState(
    base: PersistedVmBase,
    vmm: HostProcess,
    shape: FirecrackerShape,
  ): PersistedFirecrackerState {
    return { ...base, firecracker: { pid: vmm.pid, startTime: vmm.startTime }, shape }
  }

  process(state: PersistedFirecrackerState): HostProcess {
    return state.firecracker
  }

  sandbox(options: VmmSandboxOptions<FirecrackerTypes>): FirecrackerSandbox {
    return new FirecrackerSandbox({ ...options, firecrackerVersion: this.#safeVersion() })
  }

  #safeVersion(): string {
    try {
      return this.#version()
    } catch {
      return 'unknown'
    }
  }
}
