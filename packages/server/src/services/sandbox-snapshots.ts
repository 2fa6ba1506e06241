/**
 * Filesystem snapshots of sandboxes, saved under `<dataDir>/snapshots/<id>` and recorded in the
 * store: taken, listed, deleted, and found again when a create names one as its template.
 */
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import type { SandboxSnapshot } from '@sandcell/runtime'
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  newSandboxId,
  type Logger,
} from '@sandcell/shared'
import type { SnapshotRecord, SqliteStore } from '../store/sqlite-store.js'
import type { KeyedMutex } from './keyed-mutex.js'
import type { LiveSandboxes } from './live-sandboxes.js'

/** What a create starts from: a template, or a snapshot of a sandbox made from that template. */
export interface SandboxSource {
  template: string
  fromSnapshot?: SandboxSnapshot
  /** The sandbox the snapshot was taken of (its agent's state is in a memory snapshot). */
  snapshotOf?: string
}

/** Dependencies of {@link SandboxSnapshots}. */
export interface SandboxSnapshotsOptions {
  /** The server's data dir; snapshots go to its `snapshots` folder. */
  dataDir: string
  store: SqliteStore
  live: LiveSandboxes
  /** The per-sandbox lock every change takes: a snapshot waits for a change under way. */
  mutex: KeyedMutex
  log: Logger
}

export class SandboxSnapshots {
  readonly #dir: string
  readonly #store: SqliteStore
  readonly #live: LiveSandboxes
  readonly #mutex: KeyedMutex
  readonly #log: Logger

  constructor(options: SandboxSnapshotsOptions) {
    this.#dir = join(options.dataDir, 'snapshots')
    this.#store = options.store
    this.#live = options.live
    this.#mutex = options.mutex
    this.#log = options.log
  }

  /** Creates the snapshots folder (owner only). */
  start(): void {
    mkdirSync(this.#dir, { recursive: true, mode: 0o700 })
  }

  /** What a create with this template id starts from: a snapshot's id or name, else a template. */
  sourceOf(templateId: string): SandboxSource {
    const snapshot = this.#store.findSnapshot(templateId)
    if (snapshot === undefined) {
      return { template: templateId }
    }
    return {
      template: snapshot.templateId,
      fromSnapshot: {
        driver: snapshot.driver,
        template: snapshot.templateId,
        diskMiB: snapshot.limits.diskMiB,
        dir: join(this.#dir, snapshot.id),
        memory: snapshot.memory,
      },
      snapshotOf: snapshot.sandboxId,
    }
  }

  /**
   * Saves a sandbox's filesystem as a snapshot that `create` accepts as a template id.
   * @throws SandboxNotFoundError (404), InvalidArgumentError (400) for a name taken already,
   * FailedPreconditionError (409) for a sandbox paused keeping its filesystem only
   */
  take(id: string, name?: string): Promise<SnapshotRecord> {
    return this.#mutex.run(id, async () => {
      const live = this.#live.require(id)
      if (name !== undefined && this.#store.findSnapshot(name) !== undefined) {
        throw new InvalidArgumentError(`a snapshot named ${JSON.stringify(name)} exists already`)
      }
      if (live.sandbox === undefined) {
        throw new FailedPreconditionError(
          `sandbox ${id} is paused keeping its filesystem only; connect to it before a snapshot or fork`,
        )
      }
      const snapshotId = newSandboxId()
      const saved = await live.sandbox.snapshot({ dir: join(this.#dir, snapshotId) })
      const snapshot: SnapshotRecord = {
        id: snapshotId,
        sandboxId: id,
        names: name === undefined ? [] : [name],
        templateId: saved.template,
        driver: saved.driver,
        limits: live.record.limits,
        envVars: live.record.envVars,
        memory: saved.memory,
        createdAt: Date.now(),
      }
      this.#store.insertSnapshot(snapshot)
      this.#log.info({ sandboxId: id, snapshotId }, 'snapshot taken')
      return snapshot
    })
  }

  /** Snapshots, oldest first, of one sandbox or with one name when asked. */
  list(
    filter: { sandboxId?: string | undefined; name?: string | undefined } = {},
  ): SnapshotRecord[] {
    return this.#store
      .listSnapshots()
      .filter(
        (s) =>
          (filter.sandboxId === undefined || s.sandboxId === filter.sandboxId) &&
          (filter.name === undefined || s.names.includes(filter.name)),
      )
  }

  /** @throws NotFoundError (404) */
  delete(idOrName: string): void {
    const snapshot = this.#store.findSnapshot(idOrName)
    if (snapshot === undefined) {
      throw new NotFoundError(`snapshot ${idOrName} does not exist`)
    }
    this.#store.deleteSnapshot(snapshot.id)
    rmSync(join(this.#dir, snapshot.id), { recursive: true, force: true })
  }
}
