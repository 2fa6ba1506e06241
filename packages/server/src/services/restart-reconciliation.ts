/**
 * After a restart: what the runtime still has running is matched with the store. Records whose
 * sandbox is gone are dropped, sandboxes of this server the store does not know are destroyed,
 * and the rest are tracked again with their stored lifetimes and fresh network rules; sandboxes
 * paused on their filesystem only (nothing runs) are tracked with their kept disks.
 */
import { existsSync, rmSync } from 'node:fs'
import { isIdlePooled, type Driver, type Sandbox } from '@sandcell/runtime'
import { errorMessage, type Logger } from '@sandcell/shared'
import type { SqliteStore } from '../store/sqlite-store.js'
import type { LiveSandboxes, SandboxPatch } from './live-sandboxes.js'
import { pausedDiskDir, sweepPausedDisks } from './paused-disks.js'
import type { SandboxTimeouts } from './sandbox-timeouts.js'

/** Label marking sandboxes this server owns (CLI-run sandboxes in the same data dir are not). */
export const ownerLabel = 'sandcell.owner'
const serverOwner = 'server'

/** The labels of every sandbox this server makes (API sandboxes and one-shot runs alike). */
export const serverOwnerLabels: Readonly<Record<string, string>> = { [ownerLabel]: serverOwner }

/** Dependencies of {@link reconcileAfterRestart}. */
export interface ReconcileOptions {
  driver: Driver
  store: SqliteStore
  live: LiveSandboxes
  timeouts: SandboxTimeouts
  log: Logger
  /** The server's data dir, where filesystem-only pauses keep disks. */
  dataDir: string
}

/**
 * Adopts what the runtime has running and reconciles the store with it, re-arming every
 * running sandbox's timeout from its stored end time. The runtime is the truth about running
 * or paused (a crash may fall between the two).
 */
export async function reconcileAfterRestart(options: ReconcileOptions): Promise<void> {
  const { driver, store, live, timeouts, log, dataDir } = options
  const adopted = new Map((await driver.adopt()).map((s) => [s.id as string, s]))
  const pausedOnDisk = new Set<string>()
  for (const record of store.listSandboxes()) {
    const sandbox = adopted.get(record.id)
    adopted.delete(record.id)
    const disk = pausedDiskDir(dataDir, record.id)
    if (sandbox === undefined && record.filesystemPause !== null && existsSync(disk)) {
      live.adopt(record, undefined)
      pausedOnDisk.add(record.id)
      log.info({ sandboxId: record.id }, 'sandbox adopted, paused on its filesystem')
      continue
    }
    if (sandbox === undefined) {
      log.warn({ sandboxId: record.id }, 'sandbox vanished while the server was down')
      store.deleteSandbox(record.id)
      continue
    }
    live.adopt(record, sandbox)
    const state = sandbox.state === 'paused' ? 'paused' : 'running'
    const patch: SandboxPatch = {}
    if (state !== record.state) {
      patch.state = state
    }
    if (record.filesystemPause !== null) {
      // A boot from the disk got as far as a sandbox before the server went down.
      patch.filesystemPause = null
      rmSync(disk, { recursive: true, force: true })
    }
    live.update(record.id, patch)
    if (state === 'running') {
      timeouts.schedule(record.id, record.endAt)
    }
    await reloadNetwork(sandbox, log)
    log.info({ sandboxId: record.id, state }, 'sandbox adopted')
  }
  for (const orphan of sweepPausedDisks(dataDir, pausedOnDisk)) {
    log.info({ sandboxId: orphan }, 'removed the kept disk of a sandbox the store does not know')
  }
  for (const sandbox of adopted.values()) {
    const owner = sandbox.info.labels[ownerLabel]
    if (isIdlePooled(sandbox) || owner === serverOwner) {
      log.info({ sandboxId: sandbox.id }, 'destroying a sandbox the store does not know')
      await sandbox
        .destroy({ reason: 'unknown to the store after a restart' })
        .catch((err: unknown) =>
          log.error({ err, sandboxId: sandbox.id }, 'cannot destroy an unknown sandbox'),
        )
    }
  }
}

/**
 * An adopted sandbox's rules name the DNS and proxy ports of the process that made it: load
 * them again for this one. A failure leaves the sandbox running with its old rules in force.
 */
async function reloadNetwork(sandbox: Sandbox, log: Logger): Promise<void> {
  const network = sandbox.info.network
  if (network === undefined) {
    return
  }
  await sandbox
    .setNetwork(network.egress)
    .catch((err: unknown) =>
      log.warn(
        { err: errorMessage(err), sandboxId: sandbox.id },
        'cannot reload the network rules of an adopted sandbox',
      ),
    )
}
