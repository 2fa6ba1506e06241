/**
 * What the microVM driver skeleton (`MicroVmDriver`) asks of a VMM (QEMU, Firecracker): its
 * tools, how its process starts and boots or restores a guest, its snapshot files, its persisted
 * state and its Sandbox. Everything else about a microVM is the skeleton's.
 */
import type { z } from 'zod'
import type { Sandbox } from '../../driver.js'
import type { Cgroup, CgroupVersion } from '../../os/cgroups.js'
import type { GuestChannel } from './guest-ctl.js'
import type { BuildContext, GuestBase } from '@sandcell/images'
import type { MicroVmKind } from './microvm-settings.js'
import type { PersistedVmBase, VmSandboxFiles } from './persisted-vm.js'
import type { HostProcess, StartVmmOptions, StartedVmm } from './vm-process.js'
import type { VmSandboxOptions, VmSandboxState } from './vm-sandbox.js'

/** The types one VMM describes its VMs with. */
export interface VmmTypes {
  kind: MicroVmKind
  /** What the VMM learns of the host once, before its first VM (its build, the accelerator). */
  setup: unknown
  /** The files of one VM's directory. */
  paths: VmSandboxFiles
  /** A VM's persisted state (with its shape), from which a later process adopts it. */
  state: VmSandboxState
}

/** What every VM booted from, or restored into, one snapshot shares: RAM size, vCPUs, images. */
export type VmShapeOf<T extends VmmTypes> = T['state']['shape']

/** What every VM of a driver is made of, found once per host. */
export interface MicroVmSetup<VmmSetup> {
  cgroupVersion: CgroupVersion
  /** The guest's uncompressed kernel, its initramfs and the sandcell image. */
  kernel: string
  initramfs: string
  sandcellImage: string
  vmm: VmmSetup
}

/** A saved VM a new one starts from: its template's snapshot, or a sandbox's snapshot. */
export interface SavedVm {
  kind: 'template' | 'snapshot'
  dir: string
}

/**
 * Where a new VM comes from: a cold boot (on a blank disk, or on a copy of a saved `disk`: a
 * snapshot without memory), or a saved VM.
 */
export type VmSource = { kind: 'boot'; disk?: string } | SavedVm

/** How a VM starts: booting its kernel, or restoring a saved VM. */
export type VmStart =
  | {
      kind: 'boot'
      pids: number
      /** The guest's memory limit: what the balloon leaves it once it runs. */
      memoryMiB: number
      /** Set for a template VM: the directory its snapshot is saved into. */
      templateDir?: string
    }
  | {
      kind: 'restore'
      from: SavedVm
      pids: number
      memoryMiB: number
      /** The disk file was grown to this size: the VMM must tell the guest's disk device. */
      growToBytes: number | undefined
    }

/** A VM being started: its files, shape, the host setup and its cgroup. */
export interface StartingVm<T extends VmmTypes> {
  paths: T['paths']
  shape: VmShapeOf<T>
  setup: MicroVmSetup<T['setup']>
  cgroup: Cgroup
  /** The network namespace the VMM runs in (a network slot's); absent: a private one. */
  netnsPath: string | undefined
  signal: AbortSignal | undefined
  /** Ends a timed step of the create (a no-op for the template VM). */
  step: (name: string) => void
}

/** How the VMM process is started: what `startVmm` takes beyond the VM's cgroup, log and netns. */
export type VmmCommand = Pick<
  StartVmmOptions,
  'binary' | 'args' | 'apiSocket' | 'cwd' | 'incomingState'
>

/** What a VMM's sandbox is made from. */
export type VmmSandboxOptions<T extends VmmTypes> = VmSandboxOptions<T['state']> & {
  paths: T['paths']
}

export interface Vmm<T extends VmmTypes> {
  readonly kind: T['kind']
  /** For messages: `QEMU`, `Firecracker`. */
  readonly name: string
  /** Part of the VMM's command line: tells its process in a cgroup whose sandbox is gone. */
  readonly processName: string
  /** Whether creates restore a snapshot of the template booted once; else every VM boots. */
  readonly templateSnapshots: boolean

  /** The VMM's own checks of the host: its binary, the tools it needs, devices. */
  probe(): { problems: string[]; details: Record<string, string> }
  /** What the VMM learns of the host before its first VM. */
  setUp(guest: GuestBase, build: BuildContext): Promise<T['setup']>
  /** The shape of every VM of a template whose root filesystem image is `rootfsImage`. */
  shape(setup: MicroVmSetup<T['setup']>, rootfsImage: string): VmShapeOf<T>
  /** The name of a template's snapshot in the images cache: changes when it must be redone. */
  templateSnapshotKey(
    template: string,
    shape: VmShapeOf<T>,
    setup: MicroVmSetup<T['setup']>,
  ): string
  /**
   * The shape of the VM saved in the snapshot directory `dir`; undefined when its manifest is
   * missing.
   * @throws FailedPreconditionError when this VMM cannot load it
   */
  savedShape(dir: string, setup: MicroVmSetup<T['setup']>): VmShapeOf<T> | undefined

  paths(sandboxesDir: string, id: string): T['paths']
  /** The files of the template VM booted in `dir`: its disk is the snapshot's. */
  templatePaths(dir: string): T['paths']
  /** Where the guest's control port is reached. */
  ctl(paths: T['paths']): string | GuestChannel
  /** Host memory the VMM itself uses on top of the guest's, MiB. */
  overheadMiB(shape: VmShapeOf<T>): number
  /** Deadline for the agent after a restore (three times it after a boot), ms. */
  readyTimeoutMs(shape: VmShapeOf<T>): number

  /** The VMM's command line for a VM that starts as `start` says. */
  command(vm: StartingVm<T>, start: VmStart): VmmCommand
  /**
   * Brings up the guest in the VMM just started: configures and boots it, or loads the saved VM
   * and lets it run with its balloon at `start.memoryMiB` and its disk grown as `start` says.
   */
  start(vm: StartingVm<T>, start: VmStart): Promise<void>
  /** What the VMM does once a new sandbox's agent answers (not the template VM's). */
  whenReady?(vm: StartingVm<T>, start: VmStart): Promise<void>
  /**
   * Saves the template VM, booted and its agent answering, into `dir` (its disk is there
   * already), shrunk to `templateMemoryMiB`; the VMM is gone afterwards.
   */
  saveTemplate(
    vm: StartingVm<T>,
    saved: { dir: string; template: string; vmm: StartedVmm; startedMs: number },
  ): Promise<void>

  /** A new VM's persisted state: the shared part, the VMM's process and the shape. */
  persistedState(base: PersistedVmBase, vmm: HostProcess, shape: VmShapeOf<T>): T['state']
  /** The schema of the persisted state, which a later process reads to adopt the VM. */
  readonly stateSchema: z.ZodType<T['state']>
  /** The VMM's process, as persisted. */
  process(state: T['state']): HostProcess
  sandbox(options: VmmSandboxOptions<T>): Sandbox
}
