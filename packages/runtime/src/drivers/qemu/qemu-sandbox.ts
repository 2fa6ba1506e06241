/** One live QEMU microVM sandbox: the shared VM sandbox, with QEMU driven over QMP. */
import { truncateSync } from 'node:fs'
import { join } from 'node:path'
import type { SandboxLimits } from '../../driver.js'
import { sparseCopy } from '../../os/native.js'
import { VmSandbox, type VmSandboxOptions } from '../microvm/vm-sandbox.js'
import { withQmp, type QmpClient } from './qmp-client.js'
import { saveVmState, setBalloon } from './vm-control.js'
import {
  snapshotFiles,
  qemuManifests,
  type PersistedVmState,
  type VmSandboxPaths,
} from './vm-state.js'

export interface QemuSandboxOptions extends VmSandboxOptions<PersistedVmState> {
  paths: VmSandboxPaths
  qemuIdentity: string
}

export class QemuSandbox extends VmSandbox<PersistedVmState> {
  readonly #paths: VmSandboxPaths
  readonly #qemuIdentity: string

  constructor(options: QemuSandboxOptions) {
    super(options, {
      name: 'QEMU',
      process: options.state.qemu,
      files: options.paths,
      ctl: options.paths.ctlSocket,
    })
    this.#paths = options.paths
    this.#qemuIdentity = options.qemuIdentity
  }

  #qmp<T>(
    use: (qmp: QmpClient) => Promise<T>,
    timeoutMs = 30_000,
    signal?: AbortSignal,
  ): Promise<T> {
    return withQmp(this.#paths.qmpSocket, use, {
      timeoutMs,
      ...(signal === undefined ? {} : { signal }),
    })
  }

  protected override async pauseVm(signal: AbortSignal | undefined): Promise<void> {
    await this.#qmp((qmp) => qmp.execute('stop'), 10_000, signal)
  }

  protected override async resumeVm(signal: AbortSignal | undefined): Promise<void> {
    await this.#qmp(
      async (qmp) => {
        await qmp.execute('cont')
        await setBalloon(qmp, this.info.limits.memoryMiB)
      },
      10_000,
      signal,
    )
  }

  protected override async resizeVm(
    limits: SandboxLimits,
    growDisk: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    await this.#qmp(
      async (qmp) => {
        await setBalloon(qmp, limits.memoryMiB)
        if (growDisk) {
          truncateSync(this.#paths.disk, limits.diskMiB * 1024 * 1024)
          await qmp.execute('block_resize', {
            device: 'disk',
            size: limits.diskMiB * 1024 * 1024,
          })
        }
      },
      10_000,
      signal,
    )
  }

  /**
   * Saves the whole VM: devices and RAM through QEMU's migration stream, and the disk copied
   * while the vCPUs are stopped (QEMU drains and flushes I/O on stop), so both agree.
   */
  protected override async saveVm(
    dir: string,
    wasPaused: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    await this.#qmp(
      async (qmp) => {
        const { status } = await qmp.execute<{ status: string }>('query-status')
        if (status === 'running') {
          await qmp.execute('stop')
        } else if (status === 'postmigrate') {
          // Saved before while paused: QEMU saves again only after a cont; the cgroup
          // is thawed but the guest barely runs before the stop below.
          await qmp.execute('cont')
          await qmp.execute('stop')
        }
        try {
          await saveVmState(qmp, join(dir, snapshotFiles.state), false)
          sparseCopy(this.#paths.disk, join(dir, snapshotFiles.disk))
        } finally {
          if (!wasPaused) {
            await qmp.execute('cont')
          }
        }
      },
      300_000,
      signal,
    )
  }

  protected override writeSnapshotManifest(dir: string): void {
    qemuManifests.write(dir, {
      version: 1,
      driver: 'qemu',
      template: this.info.template,
      diskMiB: this.info.limits.diskMiB,
      shape: this.persisted.shape,
      qemuIdentity: this.#qemuIdentity,
      createdAt: new Date().toISOString(),
    })
  }
}
