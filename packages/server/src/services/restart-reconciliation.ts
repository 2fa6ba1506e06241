/**
 * After a restart: what the runtime still has running is matched with the store. Records whose
 * sandbox is gone are dropped, sandboxes of this server the store does not know are destroyed,
 * and the rest are tracked again with their stored lifetimes and fresh network rules.
 */
import { isIdlePooled, type Driver, type Sandbox } from '@sandcell/runtime'
import { errorMessage, type Logger } from '@sandcell/shared'
import type { SqliteStore } from '../store/sqlite-store.js'
import type { LiveSandboxes } from './live-sandboxes.js'
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
}

/**
 * Adopts what the runtime has running and reconciles the store with it, re-arming every
 * running sandbox's timeout from its stored end time. The runtime is the truth about running
 * or paused (a crash may fall between the two).
 */
export async function reconcileAfterRestart(options: ReconcileOptions): Promise<void> {
  const { driver, store, live, timeouts, log } = options
  const adopted = new Map((await driver.adopt()).map((s) => [s.id as string, s]))
  for (const record of store.listSandboxes()) {
    const sandbox = adopted.get(record.id)
    adopted.delete(record.id)
    if (sandbox === undefined) {
      log.warn({ sandboxId: record.id }, 'sandbox vanished while the server was down')
      store.deleteSandbox(record.id)
      continue
    }
    live.adopt(record, sandbox)
    const state = sandbox.state === 'paused' ? 'paused' : 'running'
    if (state !== record.state) {
      live.update(record.id, { state })
    }
    if (state === 'running') {
      timeouts.schedule(record.id, record.endAt)
    }
    await reloadNetwork(sandbox, log)
    log.info({ sandboxId: record.id, state }, 'sandbox adopted')
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
