/**
 * A client of Firecracker's HTTP API on its `--api-sock` Unix socket: the calls the driver
 * makes (machine config, boot source, drives, network, vsock, balloon, start, pause/resume,
 * snapshot create/load), with the request shapes of Firecracker's swagger definition.
 */
import { Client } from 'undici'
import { DriverError } from '@sandcell/shared'

/** A request Firecracker refused: its status and `fault_message`. */
export class FirecrackerApiError extends DriverError {
  readonly statusCode: number
  constructor(method: string, path: string, statusCode: number, fault: string) {
    super(`Firecracker ${method} ${path} failed (${statusCode}): ${fault}`, {
      details: { method, path, statusCode },
    })
    this.statusCode = statusCode
  }
}

export interface MachineConfig {
  vcpu_count: number
  mem_size_mib: number
  smt?: boolean
  track_dirty_pages?: boolean
}

export interface BootSource {
  kernel_image_path: string
  boot_args?: string
  initrd_path?: string
}

export interface Drive {
  drive_id: string
  path_on_host: string
  is_root_device: boolean
  is_read_only: boolean
  cache_type?: 'Unsafe' | 'Writeback'
  io_engine?: 'Sync' | 'Async'
}

export interface NetworkInterface {
  iface_id: string
  host_dev_name: string
  guest_mac?: string
}

export interface Vsock {
  guest_cid: number
  uds_path: string
}

export interface Balloon {
  /** Memory taken from the guest, MiB (the balloon's size, not the guest's). */
  amount_mib: number
  deflate_on_oom: boolean
  stats_polling_interval_s?: number
}

export interface SnapshotCreate {
  snapshot_path: string
  mem_file_path: string
  snapshot_type?: 'Full' | 'Diff'
}

export interface SnapshotLoad {
  snapshot_path: string
  mem_backend: { backend_type: 'File' | 'Uffd'; backend_path: string }
  track_dirty_pages?: boolean
  resume_vm?: boolean
}

export interface FirecrackerApiOptions {
  /** Deadline of each request, ms. @default 10000 */
  timeoutMs?: number
}

/** One Firecracker process's API. Close it when done (it keeps a connection open). */
export class FirecrackerApi {
  readonly #client: Client
  readonly #timeoutMs: number

  constructor(socketPath: string, options: FirecrackerApiOptions = {}) {
    // The host name is unused on a Unix socket but must be a valid origin.
    this.#client = new Client('http://localhost', { socketPath, pipelining: 0 })
    this.#timeoutMs = options.timeoutMs ?? 10_000
  }

  /**
   * Sends one request; resolves with the parsed JSON body (undefined for 204).
   * @throws FirecrackerApiError for a 4xx/5xx answer, DriverError when the socket fails
   */
  async request<T = undefined>(
    method: 'GET' | 'PUT' | 'PATCH',
    path: string,
    body?: object,
    options: { signal?: AbortSignal } = {},
  ): Promise<T> {
    const signal = AbortSignal.any([
      AbortSignal.timeout(this.#timeoutMs),
      ...(options.signal === undefined ? [] : [options.signal]),
    ])
    let response: Awaited<ReturnType<Client['request']>>
    try {
      response = await this.#client.request({
        method,
        path,
        signal,
        headers: { accept: 'application/json', 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
    } catch (err) {
      throw new DriverError(`Firecracker ${method} ${path}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const text = await response.body.text()
    if (response.statusCode >= 300) {
      throw new FirecrackerApiError(method, path, response.statusCode, faultMessage(text))
    }
    return (text.length === 0 ? undefined : JSON.parse(text)) as T
  }

  putMachineConfig(config: MachineConfig): Promise<void> {
    return this.request('PUT', '/machine-config', config)
  }

  putBootSource(source: BootSource): Promise<void> {
    return this.request('PUT', '/boot-source', source)
  }

  putDrive(drive: Drive): Promise<void> {
    return this.request('PUT', `/drives/${encodeURIComponent(drive.drive_id)}`, drive)
  }

  /** Points a drive of a running VM at its file again: Firecracker re-reads its size. */
  patchDrive(driveId: string, pathOnHost: string): Promise<void> {
    return this.request('PATCH', `/drives/${encodeURIComponent(driveId)}`, {
      drive_id: driveId,
      path_on_host: pathOnHost,
    })
  }

  putNetworkInterface(iface: NetworkInterface): Promise<void> {
    return this.request('PUT', `/network-interfaces/${encodeURIComponent(iface.iface_id)}`, iface)
  }

  putVsock(vsock: Vsock): Promise<void> {
    return this.request('PUT', '/vsock', vsock)
  }

  putBalloon(balloon: Balloon): Promise<void> {
    return this.request('PUT', '/balloon', balloon)
  }

  /** Resizes the balloon of a running VM: `amountMiB` is what the guest gives up. */
  patchBalloon(amountMiB: number): Promise<void> {
    return this.request('PATCH', '/balloon', { amount_mib: amountMiB })
  }

  startInstance(): Promise<void> {
    return this.request('PUT', '/actions', { action_type: 'InstanceStart' })
  }

  pause(): Promise<void> {
    return this.request('PATCH', '/vm', { state: 'Paused' })
  }

  resume(): Promise<void> {
    return this.request('PATCH', '/vm', { state: 'Resumed' })
  }

  /** Saves the paused VM: device state to `snapshot_path`, guest memory to `mem_file_path`. */
  createSnapshot(snapshot: SnapshotCreate, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.request('PUT', '/snapshot/create', snapshot, options)
  }

  /** Loads a snapshot into a fresh Firecracker (nothing configured yet). */
  loadSnapshot(snapshot: SnapshotLoad, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.request('PUT', '/snapshot/load', snapshot, options)
  }

  /** `GET /`: the instance's id, state (`Not started`, `Running`, `Paused`) and VMM version. */
  describeInstance(): Promise<{ id: string; state: string; vmm_version: string }> {
    return this.request('GET', '/')
  }

  close(): Promise<void> {
    return this.#client.close()
  }
}

/** Firecracker's error body is `{"fault_message": "..."}`; anything else is quoted as is. */
export function faultMessage(body: string): string {
  try {
    const parsed = JSON.parse(body) as { fault_message?: unknown }
    if (typeof parsed.fault_message === 'string') {
      return parsed.fault_message
    }
  } catch {
    // Not JSON: quote it.
  }
  return body.trim().slice(0, 300) || 'no error message'
}
