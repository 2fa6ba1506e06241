/**
 * Firecracker's API behind its socket, request by request: the routing of
 * `api_server/parsed_request.rs`, the pre-boot and runtime controllers of `rpc_interface.rs` and
 * the checks of `resources.rs`, with Firecracker v1.16.1's error texts. What runs the guest is a
 * {@link VmmBackend}; the shim's is QEMU, the unit tests' a fake.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs'
import { resolve } from 'node:path'
import {
  SerdeError,
  parseJson,
  readStruct,
  shapes,
  type BalloonConfig,
  type BootSourceConfig,
  type DriveConfig,
  type MachineConfig,
  type NetConfig,
  type VsockConfig,
} from './api-schema.js'

/** What a VM is made of: the resources configured through the API (and kept in snapshots). */
export interface VmConfig {
  machine: MachineConfig
  bootSource?: BootSourceConfig
  /** In Firecracker's order: the root device first, then as inserted. */
  drives: DriveConfig[]
  nets: NetConfig[]
  vsock?: VsockConfig
  balloon?: BalloonConfig
}

/** A guest that runs (or is paused). */
export interface RunningVm {
  pause(): Promise<void>
  resume(): Promise<void>
  /** Sets the balloon's size (what the guest gives up), MiB. */
  setBalloon(amountMiB: number): Promise<void>
  /** Whether the guest's balloon driver has taken the device. */
  balloonActive(): Promise<boolean>
  /** Tells the guest the drive's backing file now has `sizeBytes`. */
  resizeDrive(driveId: string, sizeBytes: number): Promise<void>
  /** Appends the paused VM's device state to the open file `stateFd`, its RAM to `memoryPath`. */
  save(stateFd: number, memoryPath: string): Promise<void>
  ctrlAltDel(): Promise<void>
  /** Where a host connection to guest vsock `port` goes, if the guest serves that port. */
  vsockTarget(port: number): string | undefined
  /** Settles when the guest has stopped and the VMM is gone. */
  readonly exited: Promise<void>
}

export interface VmmBackend {
  /** Boots `config` (kernel, drives, devices) and resolves once its vCPUs run. */
  boot(config: VmConfig): Promise<RunningVm>
  /**
   * Starts `config` paused from the state at `offset` in `statePath` and the guest memory in
   * `memoryPath` (never written to).
   */
  restore(
    config: VmConfig,
    state: { path: string; offset: number },
    memoryPath: string,
  ): Promise<RunningVm>
  /** Identifies the VMM build: snapshots load only into the one that made them. */
  readonly identity: string
}

/** The host side of a vsock device: its Unix socket, bound when the device is configured. */
export interface VsockListener {
  close(): void
}

export interface ControllerOptions {
  id: string
  version: string
  backend: VmmBackend
  /** Binds the vsock device's Unix socket; throws the bind's error. */
  bindVsock(path: string, target: (port: number) => string | undefined): Promise<VsockListener>
  /** A load failed half way: Firecracker ends the process after answering. */
  onFatal(): void
}

export interface ApiReply {
  status: 200 | 204 | 400
  body?: unknown
}

type InstanceState = 'Not started' | 'Running' | 'Paused'

/** A refusal with Firecracker's `fault_message`. */
class Fault extends Error {}

const notSupportedPreBoot = 'The requested operation is not supported before starting the microVM.'
const notSupportedPostBoot = 'The requested operation is not supported after starting the microVM.'
const maxVcpus = 32
/** Firecracker's `CMDLINE_MAX_SIZE` on x86_64. */
const cmdlineMaxSize = 2048
const defaultKernelCmdline =
  'reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce'
const snapshotMagic = 'SANDCELL-FIRECRACKER-SHIM-SNAPSHOT 1\n'

/** How Rust prints an `io::Error` from the OS: glibc's text and the errno. */
export function ioMessage(err: unknown): string {
  const error = err as NodeJS.ErrnoException
  const text = /^[A-Z0-9_]+: ([^,]+)/.exec(error.message)?.[1] ?? error.message
  const errno = typeof error.errno === 'number' ? Math.abs(error.errno) : undefined
  const sentence = text.charAt(0).toUpperCase() + text.slice(1)
  return errno === undefined ? sentence : `${sentence} (os error ${errno})`
}

function serde(err: unknown): Fault {
  if (err instanceof SerdeError) {
    return new Fault(
      `An error occurred when deserializing the json body of a request: ${err.message}.`,
    )
  }
  return err as Fault
}

function unsupported(what: string): Fault {
  return new Fault(`the sandcell Firecracker shim does not implement ${what}`)
}

/** `checked_id`: not empty, alphanumeric and `_` only. */
function checkedId(id: string | undefined): string {
  if (id === undefined || id.length === 0) {
    throw new Fault('The ID cannot be empty.')
  }
  if (!/^[\p{L}\p{N}_]+$/u.test(id)) {
    throw new Fault('API Resource IDs can only contain alphanumeric characters and underscores.')
  }
  return id
}

/** Opens and closes `path` as Firecracker opens it, so that the same errors show. */
function probeFile(path: string, write: boolean): number {
  const fd = openSync(path, write ? 'r+' : 'r')
  try {
    return fstatSync(fd).size
  } finally {
    closeSync(fd)
  }
}

export class FirecrackerController {
  readonly #options: ControllerOptions
  #state: InstanceState = 'Not started'
  /** Set by anything that configures a boot; a snapshot load is refused afterwards. */
  #bootPath = false
  #config: VmConfig = {
    machine: {
      vcpu_count: 1,
      mem_size_mib: 128,
      smt: false,
      track_dirty_pages: false,
      huge_pages: 'None',
    },
    drives: [],
    nets: [],
  }
  #vm: RunningVm | undefined
  #vsock: VsockListener | undefined
  #queue: Promise<unknown> = Promise.resolve()

  constructor(options: ControllerOptions) {
    this.#options = options
  }

  get state(): InstanceState {
    return this.#state
  }

  /** The running guest, once started or loaded. */
  get vm(): RunningVm | undefined {
    return this.#vm
  }

  /** Serves one request; requests run one at a time, as Firecracker's VMM thread takes them. */
  handle(method: string, url: string, body: string): Promise<ApiReply> {
    const next = this.#queue.then(() => this.#handle(method, url, body))
    this.#queue = next.catch(() => undefined)
    return next
  }

  async #handle(method: string, url: string, body: string): Promise<ApiReply> {
    try {
      return await this.#route(method, url, body.length === 0 ? undefined : body)
    } catch (err) {
      if (err instanceof Fault) {
        return { status: 400, body: { fault_message: err.message } }
      }
      throw err
    }
  }

  async #route(method: string, url: string, body: string | undefined): Promise<ApiReply> {
    const tokens = (url.split('?')[0] ?? '').replace(/^\/+/, '').split('/')
    while (tokens.length > 0 && tokens[tokens.length - 1] === '') {
      tokens.pop()
    }
    const [path = '', next] = tokens
    const read = (shape: keyof typeof shapes): Record<string, unknown> => {
      try {
        return readStruct(shapes[shape], parseJson(body ?? ''))
      } catch (err) {
        throw serde(err)
      }
    }
    if (method === 'GET' && body === undefined) {
      switch (path) {
        case '':
          return this.#ok({
            id: this.#options.id,
            state: this.#state,
            vmm_version: this.#options.version,
            app_name: 'Firecracker',
          })
        case 'version':
          return this.#ok({ firecracker_version: this.#options.version })
        case 'machine-config':
          return this.#ok(this.#config.machine)
        case 'balloon':
          if (next === undefined) {
            if (this.#config.balloon === undefined) {
              throw new Fault('Balloon config error: No balloon device found.')
            }
            return this.#ok(this.#config.balloon)
          }
          if (next === 'statistics' || next === 'hinting') {
            throw unsupported(`GET /balloon/${next}`)
          }
          throw new Fault(`Unrecognized GET request path \`${next}\`.`)
        case 'vm':
        case 'mmds':
        case 'hotplug':
          throw unsupported(`GET /${path}`)
      }
    }
    if (method === 'GET' && body !== undefined) {
      throw new Fault('GET request cannot have a body.')
    }
    if (method === 'PUT' && body !== undefined) {
      switch (path) {
        case 'actions':
          return this.#action(read('ActionBody').action_type as string)
        case 'balloon':
          return this.#preBoot(() => this.#setBalloon(read('BalloonDeviceConfig')))
        case 'boot-source':
          return this.#preBoot(() => this.#setBootSource(read('BootSourceConfig')))
        case 'drives': {
          const id = checkedId(next)
          const drive = read('BlockDeviceConfig')
          if (drive.drive_id !== id) {
            throw new Fault('The id from the path does not match the id from the body!')
          }
          return this.#preBoot(() => this.#insertDrive(drive))
        }
        case 'network-interfaces': {
          const id = checkedId(next)
          const net = read('NetworkInterfaceConfig')
          if (net.iface_id !== id) {
            throw new Fault(
              `The id from the path [${id}] does not match the id from the body [${String(net.iface_id)}]!`,
            )
          }
          return this.#preBoot(() => this.#insertNet(net))
        }
        case 'machine-config':
          return this.#preBoot(() => this.#updateMachine(read('MachineConfig'), false))
        case 'snapshot':
          if (next === 'create') {
            const params = read('CreateSnapshotParams')
            return this.#runtime(() => this.#createSnapshot(params))
          }
          if (next === 'load') {
            const params = read('LoadSnapshotConfig')
            return this.#loadSnapshot(params)
          }
          if (next === undefined) {
            throw new Fault('Missing snapshot operation type.')
          }
          throw new Fault(`Invalid request method and/or path: PUT /snapshot/${next}.`)
        case 'vsock':
          return this.#preBoot(() => this.#setVsock(read('VsockDeviceConfig')))
        case 'cpu-config':
        case 'pmem':
        case 'logger':
        case 'serial':
        case 'metrics':
        case 'mmds':
        case 'entropy':
        case 'hotplug':
          throw unsupported(`PUT /${path}`)
      }
    }
    if (method === 'PUT' && body === undefined) {
      throw new Fault('Empty PUT request.')
    }
    if (method === 'PATCH' && path === 'balloon') {
      if (next === 'statistics' || next === 'hinting') {
        throw unsupported(`PATCH /balloon/${next}`)
      }
      if (body === undefined) {
        throw new Fault('Empty PATCH request.')
      }
      const update = read('BalloonUpdateConfig')
      return this.#runtime(() => this.#updateBalloon(update.amount_mib as number))
    }
    if (method === 'PATCH' && body !== undefined) {
      switch (path) {
        case 'drives': {
          const id = checkedId(next)
          const update = read('BlockDeviceUpdateConfig')
          if (update.drive_id !== id) {
            throw new Fault('The id from the path does not match the id from the body!')
          }
          return this.#runtime(() => this.#updateDrive(update))
        }
        case 'machine-config': {
          const update = read('MachineConfigUpdate')
          return this.#preBoot(() => this.#updateMachine(update, true))
        }
        case 'network-interfaces': {
          const id = checkedId(next)
          const update = read('NetworkInterfaceUpdateConfig')
          if (update.iface_id !== id) {
            throw new Fault(
              `The id from the path [${id}] does not match the id from the body [${String(update.iface_id)}]!`,
            )
          }
          return this.#runtime(() => this.#updateNet(id))
        }
        case 'vm': {
          const wanted = read('Vm').state as 'Paused' | 'Resumed'
          return this.#runtime(() => (wanted === 'Paused' ? this.#pause() : this.#resume()))
        }
        case 'mmds':
        case 'pmem':
        case 'hotplug':
          throw unsupported(`PATCH /${path}`)
      }
    }
    if (method === 'PATCH' && body === undefined) {
      throw new Fault('Empty PATCH request.')
    }
    if (method === 'DELETE' && body !== undefined) {
      throw new Fault('Empty Delete request.')
    }
    if (
      method === 'DELETE' &&
      (path === 'drives' || path === 'pmem' || path === 'network-interfaces')
    ) {
      throw unsupported(`DELETE /${path}`)
    }
    throw new Fault(`Invalid request method and/or path: ${method} ${path}.`)
  }

  #ok(body: unknown): ApiReply {
    return { status: 200, body }
  }

  async #preBoot(action: () => Promise<void> | void): Promise<ApiReply> {
    if (this.#state !== 'Not started') {
      throw new Fault(notSupportedPostBoot)
    }
    await action()
    return { status: 204 }
  }

  async #runtime(action: () => Promise<void> | void): Promise<ApiReply> {
    if (this.#state === 'Not started') {
      throw new Fault(notSupportedPreBoot)
    }
    await action()
    return { status: 204 }
  }

  #action(type: string): Promise<ApiReply> {
    switch (type) {
      case 'InstanceStart':
        return this.#preBoot(() => this.#start())
      case 'SendCtrlAltDel':
        return this.#runtime(() => this.#running().ctrlAltDel())
      default:
        return this.#runtime(() => {
          throw unsupported('FlushMetrics (no metrics are configured)')
        })
    }
  }

  #running(): RunningVm {
    if (this.#vm === undefined) {
      throw new Fault(notSupportedPreBoot)
    }
    return this.#vm
  }

  #updateMachine(update: Record<string, unknown>, partial: boolean): void {
    if (partial && Object.keys(update).length === 0) {
      throw new Fault('Empty PATCH request.')
    }
    this.#bootPath = true
    const current = this.#config.machine
    const fresh: MachineConfig = partial
      ? current
      : { ...current, smt: false, track_dirty_pages: false, huge_pages: 'None' }
    const machine: MachineConfig = {
      vcpu_count: (update.vcpu_count as number | undefined) ?? fresh.vcpu_count,
      mem_size_mib: (update.mem_size_mib as number | undefined) ?? fresh.mem_size_mib,
      smt: (update.smt as boolean | undefined) ?? fresh.smt,
      track_dirty_pages:
        (update.track_dirty_pages as boolean | undefined) ?? fresh.track_dirty_pages,
      huge_pages:
        (update.huge_pages as MachineConfig['huge_pages'] | undefined) ?? fresh.huge_pages,
    }
    const template = (update.cpu_template as string | undefined) ?? current.cpu_template
    if (template !== undefined && template !== 'None') {
      machine.cpu_template = template
    }
    const { vcpu_count: vcpus, mem_size_mib: memory } = machine
    if (vcpus === 0 || vcpus > maxVcpus || (machine.smt && vcpus > 1 && vcpus % 2 === 1)) {
      throw new Fault(
        `Machine config error: The number of vCPUs must be greater than 0, less than ${maxVcpus} and must be 1 or an even number if SMT is enabled.`,
      )
    }
    if (memory === 0 || (machine.huge_pages === '2M' && memory % 2 === 1)) {
      throw new Fault(
        'Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.',
      )
    }
    if (this.#config.balloon !== undefined && memory < this.#config.balloon.amount_mib) {
      throw new Fault(
        'Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.',
      )
    }
    this.#config.machine = machine
  }

  #setBootSource(source: Record<string, unknown>): void {
    this.#bootPath = true
    const config = source as unknown as BootSourceConfig
    try {
      probeFile(config.kernel_image_path, false)
    } catch (err) {
      throw new Fault(`Boot source error: The kernel file cannot be opened: ${ioMessage(err)}`)
    }
    if (config.initrd_path !== undefined) {
      try {
        probeFile(config.initrd_path, false)
      } catch (err) {
        throw new Fault(
          `Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. ${ioMessage(err)}`,
        )
      }
    }
    const cmdline = config.boot_args ?? defaultKernelCmdline
    if (cmdline.length >= cmdlineMaxSize || cmdline.includes('\0')) {
      throw new Fault(
        'Boot source error: The kernel command line is invalid: Command line overflow',
      )
    }
    this.#config.bootSource = config
  }

  #insertDrive(raw: Record<string, unknown>): void {
    this.#bootPath = true
    if (raw.socket !== undefined) {
      throw unsupported('vhost-user block devices')
    }
    if (raw.path_on_host === undefined) {
      throw new Fault(
        'Drive config error: Unable to create the virtio block device: Invalid block config.',
      )
    }
    const drive: DriveConfig = {
      drive_id: raw.drive_id as string,
      is_root_device: raw.is_root_device as boolean,
      cache_type: (raw.cache_type as DriveConfig['cache_type'] | undefined) ?? 'Unsafe',
      is_read_only: (raw.is_read_only as boolean | undefined) ?? false,
      path_on_host: raw.path_on_host as string,
      io_engine: (raw.io_engine as DriveConfig['io_engine'] | undefined) ?? 'Sync',
      ...(raw.partuuid === undefined ? {} : { partuuid: raw.partuuid as string }),
    }
    const drives = this.#config.drives
    const position = drives.findIndex((d) => d.drive_id === drive.drive_id)
    const hasRoot = drives[0]?.is_root_device === true
    if (drive.is_root_device && hasRoot && position !== 0) {
      throw new Fault('Drive config error: A root block device already exists!')
    }
    try {
      probeFile(drive.path_on_host, !drive.is_read_only)
    } catch (err) {
      throw new Fault(
        `Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: ${ioMessage(err)} ${drive.path_on_host}`,
      )
    }
    if (position < 0) {
      if (drive.is_root_device) {
        drives.unshift(drive)
      } else {
        drives.push(drive)
      }
      return
    }
    drives[position] = drive
    if (position !== 0 && drive.is_root_device) {
      const first = drives[0]
      if (first !== undefined) {
        drives[0] = drive
        drives[position] = first
      }
    }
  }

  #insertNet(raw: Record<string, unknown>): void {
    this.#bootPath = true
    const net = raw as unknown as NetConfig
    if (
      net.guest_mac !== undefined &&
      this.#config.nets.some((n) => n.guest_mac === net.guest_mac && n.iface_id !== net.iface_id)
    ) {
      throw new Fault(`Network config error: The MAC address is already in use: ${net.guest_mac}`)
    }
    this.#config.nets = [...this.#config.nets.filter((n) => n.iface_id !== net.iface_id), net]
  }

  async #setVsock(raw: Record<string, unknown>): Promise<void> {
    this.#bootPath = true
    const vsock: VsockConfig = {
      guest_cid: raw.guest_cid as number,
      uds_path: raw.uds_path as string,
    }
    this.#vsock?.close()
    this.#vsock = undefined
    try {
      this.#vsock = await this.#bindVsock(vsock.uds_path)
    } catch (err) {
      throw new Fault(
        `Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: ${ioMessage(err)}`,
      )
    }
    this.#config.vsock = vsock
  }

  #bindVsock(udsPath: string): Promise<VsockListener> {
    return this.#options.bindVsock(resolve(udsPath), (port) => this.#vm?.vsockTarget(port))
  }

  #setBalloon(raw: Record<string, unknown>): void {
    this.#bootPath = true
    const balloon: BalloonConfig = {
      amount_mib: raw.amount_mib as number,
      deflate_on_oom: raw.deflate_on_oom as boolean,
      stats_polling_interval_s: (raw.stats_polling_interval_s as number | undefined) ?? 0,
      free_page_hinting: (raw.free_page_hinting as boolean | undefined) ?? false,
      free_page_reporting: (raw.free_page_reporting as boolean | undefined) ?? false,
    }
    if (balloon.free_page_hinting) {
      throw unsupported('free page hinting')
    }
    if (balloon.amount_mib > this.#config.machine.mem_size_mib) {
      throw new Fault('Balloon config error: Amount of pages requested is too large.')
    }
    this.#config.balloon = balloon
  }

  async #start(): Promise<void> {
    if (this.#config.bootSource === undefined) {
      throw new Fault('Start microvm error: Cannot start microvm without kernel configuration.')
    }
    try {
      this.#vm = await this.#options.backend.boot(structuredClone(this.#config))
    } catch (err) {
      throw new Fault(`Start microvm error: ${(err as Error).message}`)
    }
    this.#state = 'Running'
  }

  async #pause(): Promise<void> {
    await this.#running().pause()
    this.#state = 'Paused'
  }

  async #resume(): Promise<void> {
    await this.#running().resume()
    this.#state = 'Running'
  }

  async #updateBalloon(amountMiB: number): Promise<void> {
    const vm = this.#running()
    const balloon = this.#config.balloon
    if (balloon === undefined) {
      throw new Fault('Balloon update error: Failed perform action on device: Device not found')
    }
    if (amountMiB > this.#config.machine.mem_size_mib) {
      throw new Fault(
        `Balloon update error: Balloon: Requested memory should be less than ${amountMiB}MiB`,
      )
    }
    if (!(await vm.balloonActive())) {
      throw new Fault('Balloon update error: Balloon: Device not activated yet.')
    }
    await vm.setBalloon(amountMiB)
    balloon.amount_mib = amountMiB
  }

  async #updateDrive(update: Record<string, unknown>): Promise<void> {
    const vm = this.#running()
    const suffix = ' Please verify the request arguments.'
    const drive = this.#config.drives.find((d) => d.drive_id === update.drive_id)
    if (drive === undefined) {
      throw new Fault(
        `Drive config error: Unable to patch the block device: Failed perform action on device: Device not found${suffix}`,
      )
    }
    const path = update.path_on_host as string | undefined
    if (path === undefined) {
      if (update.rate_limiter === undefined) {
        throw new Fault(
          `Drive config error: Unable to patch the block device: Block: Running method expected different backend.${suffix}`,
        )
      }
      return
    }
    let size: number
    try {
      size = probeFile(path, !drive.is_read_only)
    } catch (err) {
      throw new Fault(
        `Drive config error: Unable to patch the block device: Block: Virtio backend error: Error manipulating the backing file: ${ioMessage(err)} ${path}${suffix}`,
      )
    }
    if (resolve(path) !== resolve(drive.path_on_host)) {
      throw unsupported(`a new backing file for a running drive (${drive.drive_id})`)
    }
    // Firecracker exposes whole sectors only.
    await vm.resizeDrive(drive.drive_id, size - (size % 512))
    drive.path_on_host = path
  }

  #updateNet(id: string): void {
    if (!this.#config.nets.some((n) => n.iface_id === id)) {
      throw new Fault(
        'Network config error: Unable to update the net device: Failed perform action on device: Device not found',
      )
    }
    // Rate limiters only: the shim's network has none to change.
  }

  async #createSnapshot(params: Record<string, unknown>): Promise<void> {
    const vm = this.#running()
    if (params.snapshot_type === 'Diff') {
      throw unsupported('diff snapshots')
    }
    if (this.#state !== 'Paused') {
      throw new Fault(
        'Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running',
      )
    }
    let fd: number
    try {
      fd = openSync(params.snapshot_path as string, 'w', 0o600)
    } catch (err) {
      throw new Fault(
        `Create snapshot error: Cannot perform open on the snapshot backing file: ${ioMessage(err)}`,
      )
    }
    try {
      const header = { vmm: this.#options.backend.identity, config: this.#config }
      writeSync(fd, `${snapshotMagic}${JSON.stringify(header)}\n`)
      await vm.save(fd, resolve(params.mem_file_path as string))
    } catch (err) {
      throw err instanceof Fault
        ? err
        : new Fault(
            `Create snapshot error: Cannot save the microVM state: ${(err as Error).message}`,
          )
    } finally {
      closeSync(fd)
    }
  }

  async #loadSnapshot(params: Record<string, unknown>): Promise<ApiReply> {
    const backend = params.mem_backend as { backend_path: string; backend_type: string } | undefined
    const memFile = params.mem_file_path as string | undefined
    if (backend !== undefined && memFile !== undefined) {
      throw serde(
        new SerdeError(
          'too many fields: either `mem_backend` or `mem_file_path` exclusively is required',
        ),
      )
    }
    if (backend === undefined && memFile === undefined) {
      throw serde(
        new SerdeError('missing field: either `mem_backend` or `mem_file_path` is required'),
      )
    }
    if (this.#state !== 'Not started') {
      throw new Fault(notSupportedPostBoot)
    }
    if (this.#bootPath) {
      throw new Fault(
        'Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.',
      )
    }
    if (backend?.backend_type === 'Uffd') {
      throw unsupported('the Uffd memory backend')
    }
    const memoryPath = backend?.backend_path ?? memFile ?? ''
    const prefix = 'Load snapshot error: Failed to restore from snapshot: '
    try {
      const { config, offset } = this.#readSnapshot(params.snapshot_path as string, prefix)
      for (const override of (params.network_overrides ?? []) as NetConfig[]) {
        const net = config.nets.find((n) => n.iface_id === override.iface_id)
        if (net === undefined) {
          throw new Fault(
            `${prefix}Failed to get snapshot state from file: Unknown Network Device.`,
          )
        }
        net.host_dev_name = override.host_dev_name
      }
      const vsockOverride = params.vsock_override as { uds_path: string } | undefined
      if (vsockOverride !== undefined) {
        if (config.vsock === undefined) {
          throw new Fault(`${prefix}Failed to get snapshot state from file: Unknown Vsock Device.`)
        }
        config.vsock.uds_path = vsockOverride.uds_path
      }
      config.machine.track_dirty_pages = params.track_dirty_pages === true
      try {
        probeFile(memoryPath, false)
      } catch (err) {
        throw new Fault(
          `${prefix}Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: ${ioMessage(err)}`,
        )
      }
      if (config.vsock !== undefined) {
        try {
          this.#vsock = await this.#bindVsock(config.vsock.uds_path)
        } catch (err) {
          throw new Fault(
            `${prefix}Failed to build microVM from snapshot: Cannot restore devices: Error binding to the host-side Unix socket: ${ioMessage(err)}`,
          )
        }
      }
      try {
        this.#vm = await this.#options.backend.restore(
          config,
          { path: resolve(params.snapshot_path as string), offset },
          resolve(memoryPath),
        )
      } catch (err) {
        throw new Fault(`${prefix}Failed to build microVM from snapshot: ${(err as Error).message}`)
      }
      this.#config = config
      this.#state = 'Paused'
      if (params.resume_vm === true) {
        try {
          await this.#resume()
        } catch (err) {
          throw new Fault(
            `Load snapshot error: Failed to resume microVM: ${(err as Error).message}`,
          )
        }
      }
    } catch (err) {
      // Firecracker takes a failed load as fatal: the process is too dirty to go on.
      this.#options.onFatal()
      throw err
    }
    return { status: 204 }
  }

  /** The configuration and where the VMM's state starts in a snapshot file of this shim. */
  #readSnapshot(path: string, prefix: string): { config: VmConfig; offset: number } {
    let fd: number
    try {
      fd = openSync(path, 'r')
    } catch (err) {
      throw new Fault(
        `${prefix}Failed to get snapshot state from file: Failed to open snapshot file: ${ioMessage(err)}`,
      )
    }
    const invalid = (why: string): Fault =>
      new Fault(
        `${prefix}Failed to get snapshot state from file: Failed to load snapshot state from file: ${why}`,
      )
    try {
      const head = Buffer.alloc(1024 * 1024)
      const length = readSync(fd, head, 0, head.length, 0)
      const text = head.subarray(0, length).toString('latin1')
      if (!text.startsWith(snapshotMagic)) {
        throw invalid('not a snapshot of the sandcell Firecracker shim (bad magic)')
      }
      const end = text.indexOf('\n', snapshotMagic.length)
      if (end < 0) {
        throw invalid('truncated header')
      }
      const header = JSON.parse(
        Buffer.from(text.slice(snapshotMagic.length, end), 'latin1').toString('utf8'),
      ) as { vmm: string; config: VmConfig }
      if (header.vmm !== this.#options.backend.identity) {
        throw invalid(`saved by another VMM build (${header.vmm})`)
      }
      return { config: header.config, offset: end + 1 }
    } finally {
      closeSync(fd)
    }
  }
}
