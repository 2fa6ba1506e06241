/** One live Firecracker microVM sandbox: the shared VM sandbox, driven through Firecracker's API. */
import { truncateSync } from 'node:fs'
import { join } from 'node:path'
import type { SandboxLimits } from '../../driver.js'
import { sparseCopy } from '../../os/native.js'
import type { GuestChannel } from '../microvm/guest-ctl.js'
import { VmSandbox, type VmSandboxOptions } from '../microvm/vm-sandbox.js'
import { FirecrackerApi } from './firecracker-api.js'
import {
  balloonMiB,
  ctlVsockPort,
  snapshotFiles,
  vmFiles,
  firecrackerManifests,
  type FirecrackerVmPaths,
  type PersistedFirecrackerState,
} from './firecracker-vm.js'

export interface FirecrackerSandboxOptions extends VmSandboxOptions<PersistedFirecrackerState> {
  paths: FirecrackerVmPaths
  firecrackerVersion: string
}

/** The guest's control port: sandcell-init behind Firecracker's vsock socket. */
export function ctlChannel(paths: FirecrackerVmPaths): GuestChannel {
  return { socketPath: paths.vsockSocket, vsockPort: ctlVsockPort }
}

export class FirecrackerSandbox extends VmSandbox<PersistedFirecrackerState> {
  readonly #paths: FirecrackerVmPaths
  readonly #firecrackerVersion: string

  constructor(options: FirecrackerSandboxOptions) {
    super(options, {
      name: 'Firecracker',
      process: options.state.firecracker,
      files: options.paths,
      ctl: ctlChannel(options.paths),
    })
    this.#paths = options.paths
    this.#firecrackerVersion = options.firecrackerVersion
  }

  async #api<T>(use: (api: FirecrackerApi) => Promise<T>, timeoutMs = 30_000): Promise<T> {
    const api = new FirecrackerApi(this.#paths.apiSocket, { timeoutMs })
    try {
      return await this.withBusy(() => use(api))
    } finally {
      await api.close()
    }
  }

  protected override async pauseVm(): Promise<void> {
    await this.#api((api) => api.pause())
  }

  protected override async resumeVm(): Promise<void> {
    await this.#api(async (api) => {
      await api.resume()
      await api.patchBalloon(balloonMiB(this.persisted.shape, this.info.limits.memoryMiB))
    })
  }

  protected override async resizeVm(limits: SandboxLimits, growDisk: boolean): Promise<void> {
    await growAndBalloon(
      this.#paths,
      balloonMiB(this.persisted.shape, limits.memoryMiB),
      growDisk ? limits.diskMiB * 1024 * 1024 : undefined,
    )
  }

  /** Pauses, saves devices and memory (Firecracker's full snapshot) and the disk, resumes. */
  protected override async saveVm(
    dir: string,
    wasPaused: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    await this.#api(async (api) => {
      if (!wasPaused) {
        await api.pause()
      }
      try {
        await api.createSnapshot(
          {
            snapshot_path: join(dir, snapshotFiles.state),
            mem_file_path: join(dir, snapshotFiles.memory),
            snapshot_type: 'Full',
          },
          signal === undefined ? {} : { signal },
        )
        sparseCopy(this.#paths.disk, join(dir, snapshotFiles.disk))
      } finally {
        if (!wasPaused) {
          await api.resume()
        }
      }
    }, 300_000)
  }

  protected override writeSnapshotManifest(dir: string): void {
    firecrackerManifests.write(dir, {
      version: 1,
      driver: 'firecracker',
      template: this.info.template,
      diskMiB: this.info.limits.diskMiB,
      shape: this.persisted.shape,
      firecrackerVersion: this.#firecrackerVersion,
      createdAt: new Date().toISOString(),
    })
  }
}

/**
 * Sets the balloon to `balloonMiB` and, when `growToBytes` is set, the disk's new size (the file
 * grows, then `PATCH /drives` makes Firecracker tell the guest).
 */
export async function growAndBalloon(
  paths: FirecrackerVmPaths,
  balloonMiB: number,
  growToBytes: number | undefined,
): Promise<void> {
  const api = new FirecrackerApi(paths.apiSocket)
  try {
    await api.patchBalloon(balloonMiB)
    if (growToBytes !== undefined) {
      truncateSync(paths.disk, growToBytes)
      await api.patchDrive('disk', vmFiles.disk)
    }
  } finally {
    await api.close()
  }
}
