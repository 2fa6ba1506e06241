/** VM operations over QMP, shared by creates, restores and snapshots. */
import { DriverError, delay } from '@sandcell/shared'
import type { QmpClient } from './qmp-client.js'

/** Far above any disk: saving is bounded by the disk, not QEMU's 128 MiB/s default cap. */
const unlimitedBandwidth = 1024 * 1024 * 1024 * 1024

interface MigrationInfo {
  status?: string
  'error-desc'?: string
}

/** Polls `query-migrate` until the migration in either direction completes. */
export async function waitForMigration(qmp: QmpClient, what: string): Promise<void> {
  for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
    const info = await qmp.execute<MigrationInfo>('query-migrate')
    if (info.status === 'completed') {
      return
    }
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new DriverError(`${what} failed: ${info['error-desc'] ?? info.status}`)
    }
    // Any other status (setup, active, device…) means it is still under way.
    await delay(wait)
  }
}

/**
 * Saves the stopped VM's state (devices and RAM, or devices only for RAM that is a shared file
 * when `ignoreShared`) into `file` through `exec:` (QEMU 7.2 has no file: migration).
 */
export async function saveVmState(
  qmp: QmpClient,
  file: string,
  ignoreShared: boolean,
): Promise<void> {
  if (file.includes("'")) {
    throw new DriverError(`cannot save a VM to a path with a quote: ${file}`)
  }
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }],
  })
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': unlimitedBandwidth })
  await qmp.execute('migrate', { uri: `exec:cat > '${file}'` })
  await waitForMigration(qmp, 'saving the VM state')
}

/** Loads the state QEMU got as fd 3 (started with -incoming defer -S); the VM stays paused. */
export async function loadVmState(qmp: QmpClient, ignoreShared: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }],
  })
  await qmp.execute('migrate-incoming', { uri: 'fd:3' })
  for (let wait = 1; ; wait = Math.min(wait * 2, 10)) {
    const { status } = await qmp.execute<{ status: string }>('query-status')
    if (status !== 'inmigrate') {
      if (status !== 'paused' && status !== 'prelaunch') {
        throw new DriverError(`restoring the VM state ended in state ${status}`)
      }
      return
    }
    await delay(wait)
  }
}

/** Sets the guest's memory through the balloon (the rest of the VM's RAM is taken back). */
export async function setBalloon(qmp: QmpClient, memoryMiB: number): Promise<void> {
  await qmp.execute('balloon', { value: memoryMiB * 1024 * 1024 })
}

/** Waits until the balloon has reached its target (within 1 MiB), for at most `timeoutMs`. */
export async function waitForBalloon(
  qmp: QmpClient,
  memoryMiB: number,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { actual } = await qmp.execute<{ actual: number }>('query-balloon')
    if (Math.abs(actual - memoryMiB * 1024 * 1024) < 1024 * 1024) {
      return true
    }
    if (Date.now() > deadline) {
      return false
    }
    await delay(50)
  }
}
