/**
 * What one Firecracker microVM is made of: its directory (Firecracker runs with it as working
 * directory, so the relative drive and vsock paths a snapshot records resolve to each clone's
 * own files), the API calls that configure a fresh VM, and the persisted state and snapshot
 * manifest that let a later process adopt it or start copies.
 */
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { z } from 'zod'
import { vmTapName } from '@sandcell/network'
import {
  hostProcessSchema,
  persistedVmBaseSchema,
  snapshotDiskFile,
  snapshotManifestBaseSchema,
  snapshotManifests,
  type VmSandboxFiles,
} from '../microvm/persisted-vm.js'
import type { FirecrackerApi } from './firecracker-api.js'

/** Names inside a VM directory; the relative ones end up in snapshots and must never change. */
export const vmFiles = {
  rootfs: 'rootfs.erofs',
  sandcell: 'sandcell.erofs',
  disk: 'disk.ext4',
  vsock: 'vsock.sock',
  api: 'api.sock',
  agent: 'agent.sock',
  log: 'vm.log',
  state: 'state.json',
} as const

/** The guest's vsock port where sandcell-init serves the control protocol. */
export const ctlVsockPort = 1024
/** The guest's context id: any value ≥ 3, the same in every VM (each has its own device). */
export const guestCid = 3
/** The TAP device the VMM attaches to, in the VM's network namespace. */
export const tapName = vmTapName
/** A fixed MAC: it is part of the saved device state. */
export const guestMac = '52:54:00:5a:cd:02'

export interface FirecrackerVmPaths extends VmSandboxFiles {
  apiSocket: string
  /** Firecracker's Unix socket in front of the guest's vsock (the control port). */
  vsockSocket: string
}

export function firecrackerVmPaths(sandboxesDir: string, id: string): FirecrackerVmPaths {
  const dir = join(sandboxesDir, id)
  return {
    dir,
    disk: join(dir, vmFiles.disk),
    log: join(dir, vmFiles.log),
    apiSocket: join(dir, vmFiles.api),
    vsockSocket: join(dir, vmFiles.vsock),
    agentSocket: join(dir, vmFiles.agent),
    state: join(dir, vmFiles.state),
  }
}

/** What every VM booted from, or restored into, one shape shares. */
export const firecrackerShapeSchema = z.object({
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  kernel: z.string(),
  initramfs: z.string(),
  rootfsImage: z.string(),
  sandcellImage: z.string(),
})

export type FirecrackerShape = z.infer<typeof firecrackerShapeSchema>

/** The balloon holds what the VM's RAM has beyond the sandbox's memory limit, MiB. */
export function balloonMiB(shape: FirecrackerShape, memoryMiB: number): number {
  return Math.max(0, shape.memoryMiB - memoryMiB)
}

/** The guest kernel's command line under Firecracker. */
export function firecrackerBootArgs(options: {
  clockNs: bigint
  seedHex: string
  pids: number
}): string {
  return [
    'console=ttyS0',
    'quiet',
    // A panic reboots at once, a reboot goes through the keyboard controller: Firecracker exits
    // and the host notices (its own boot tests use the same).
    'panic=1',
    'reboot=k',
    'i8042.noaux',
    'i8042.nomux',
    'i8042.dumbkbd',
    'init_on_alloc=0',
    'cryptomgr.notests',
    'random.trust_cpu=on',
    `sandcell.clock=${options.clockNs}`,
    `sandcell.seed=${options.seedHex}`,
    `sandcell.pids=${options.pids}`,
  ].join(' ')
}

/**
 * The serial a guest reads from a Firecracker disk: Firecracker makes it from the backing
 * file's st_dev, st_rdev and st_ino (`build_device_id`), cut to virtio's 20 bytes; the
 * drive_id never reaches the guest.
 */
export function firecrackerDiskSerial(path: string): string {
  const stat = statSync(path, { bigint: true })
  return `${stat.dev}${stat.rdev}${stat.ino}`.slice(0, 20)
}

/**
 * Configures a fresh Firecracker for a cold boot and starts it. Drives, vsock and the memory
 * balloon use paths relative to the VM directory `dir` (Firecracker's working directory).
 */
export async function configureAndBoot(
  api: FirecrackerApi,
  options: { shape: FirecrackerShape; bootArgs: string; memoryMiB: number; dir: string },
): Promise<void> {
  const { shape } = options
  const drives = [
    ['rootfs', vmFiles.rootfs, true],
    ['sandcell', vmFiles.sandcell, true],
    ['disk', vmFiles.disk, false],
  ] as const
  await api.putMachineConfig({ vcpu_count: shape.vcpus, mem_size_mib: shape.memoryMiB })
  // sandcell-init finds each disk by its serial: under Firecracker it learns them from here.
  const serials = drives.map(
    ([id, path]) => `sandcell.disk.${id}=${firecrackerDiskSerial(join(options.dir, path))}`,
  )
  await api.putBootSource({
    kernel_image_path: shape.kernel,
    initrd_path: shape.initramfs,
    boot_args: [options.bootArgs, ...serials].join(' '),
  })
  for (const [id, path, readOnly] of drives) {
    await api.putDrive({
      drive_id: id,
      path_on_host: path,
      is_root_device: false,
      is_read_only: readOnly,
    })
  }
  await api.putNetworkInterface({ iface_id: 'eth0', host_dev_name: tapName, guest_mac: guestMac })
  await api.putVsock({ guest_cid: guestCid, uds_path: vmFiles.vsock })
  await api.putBalloon({
    amount_mib: balloonMiB(shape, options.memoryMiB),
    deflate_on_oom: false,
  })
  await api.startInstance()
}

/** A Firecracker VM's persisted state: the shared part, Firecracker's process and the shape. */
export const persistedFirecrackerStateSchema = persistedVmBaseSchema.extend({
  firecracker: hostProcessSchema,
  shape: firecrackerShapeSchema,
})

export type PersistedFirecrackerState = z.infer<typeof persistedFirecrackerStateSchema>

/** Files of a Firecracker snapshot directory. */
export const snapshotFiles = {
  /** Firecracker's device and vCPU state. */
  state: 'vm.snap',
  /** All of guest RAM; clones map it privately. */
  memory: 'memory',
  disk: snapshotDiskFile,
} as const

const manifestSchema = snapshotManifestBaseSchema.extend({
  driver: z.literal('firecracker'),
  shape: firecrackerShapeSchema,
  /** The Firecracker that saved it: snapshots load only into a compatible version. */
  firecrackerVersion: z.string(),
})

export type FirecrackerSnapshotManifest = z.infer<typeof manifestSchema>

/** This VMM's snapshot manifests. */
export const firecrackerManifests = snapshotManifests(manifestSchema)
