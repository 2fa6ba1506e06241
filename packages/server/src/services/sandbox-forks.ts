/**
 * Forks: a snapshot of a sandbox's filesystem, then new sandboxes from it with the original's
 * env vars, metadata, lifecycle and network; the snapshot itself is not kept.
 */
import type { EgressPolicy } from '@sandcell/network'
import { InvalidArgumentError } from '@sandcell/shared'
import type { SandboxRecord } from '../store/sqlite-store.js'
import type { LiveSandboxes } from './live-sandboxes.js'
import type { CreateSandboxInput } from './sandbox-lifecycle.js'
import type { SandboxSnapshots } from './sandbox-snapshots.js'

/** One fork's outcome: each succeeds or fails on its own. */
export type ForkOutcome = { record: SandboxRecord } | { error: Error }

/** What {@link forkSandbox} works with. */
export interface ForkDeps {
  live: LiveSandboxes
  snapshots: SandboxSnapshots
  create(input: CreateSandboxInput): Promise<SandboxRecord>
  /** The egress of a fork whose original has no network of its own. */
  defaultEgress: EgressPolicy
}

/**
 * Forks sandbox `id` `count` times (processes are not carried over by the container driver).
 * @throws SandboxNotFoundError (404), InvalidArgumentError (400) for a count outside 1 to 100
 */
export async function forkSandbox(
  deps: ForkDeps,
  id: string,
  count: number,
  timeoutS: number | undefined,
): Promise<ForkOutcome[]> {
  const original = deps.live.require(id)
  const { record } = original
  if (!Number.isInteger(count) || count < 1 || count > 100) {
    throw new InvalidArgumentError(`count must be between 1 and 100 (got ${count})`)
  }
  const egress =
    original.sandbox?.info.network?.egress ??
    original.record.filesystemPause?.egress ??
    deps.defaultEgress
  const snapshot = await deps.snapshots.take(id)
  try {
    return await Promise.all(
      Array.from({ length: count }, async (): Promise<ForkOutcome> => {
        try {
          const forked = await deps.create({
            templateId: snapshot.id,
            snapshotAccessToken: record.envdAccessToken,
            timeoutS,
            metadata: record.metadata,
            envVars: record.envVars,
            onTimeout: record.onTimeout,
            autoPauseMemory: record.autoPauseMemory,
            autoResume: record.autoResume,
            network: {
              egress,
              record: record.network,
              allowInternetAccess: record.allowInternetAccess,
            },
          })
          return { record: forked }
        } catch (err) {
          return { error: err instanceof Error ? err : new Error(String(err)) }
        }
      }),
    )
  } finally {
    // The forks own copies of the disk: the intermediate snapshot is not kept.
    deps.snapshots.delete(snapshot.id)
  }
}
