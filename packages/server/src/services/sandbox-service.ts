/**
 * The sandbox service the routes call: one facade over the parts that each do one job. The
 * live table (live-sandboxes.ts) holds each sandbox's state and writes the store; lifecycle,
 * timeouts, sampler, snapshots, forks, restart reconciliation and the proxy's registry work
 * through it.
 */
import type { Driver, WarmPool } from '@sandcell/runtime'
import { closedPolicy, openPolicy } from '@sandcell/network'
import type { Logger } from '@sandcell/shared'
import type { ServerConfig } from '../config/schema.js'
import type { ProxyRegistry } from '../envd-proxy/proxy-target.js'
import type { ServerMetrics } from '../metrics.js'
import type { SandboxRecord, SnapshotRecord, SqliteStore } from '../store/sqlite-store.js'
import { KeyedMutex } from './keyed-mutex.js'
import { LiveSandboxes } from './live-sandboxes.js'
import { createProxyRegistry } from './proxy-registry.js'
import { reconcileAfterRestart } from './restart-reconciliation.js'
import { forkSandbox, type ForkOutcome } from './sandbox-forks.js'
import {
  SandboxLifecycle,
  type CreateSandboxInput,
  type PauseKind,
  type SandboxNetworkInput,
} from './sandbox-lifecycle.js'
import { SandboxSampler, type MetricSample } from './sandbox-sampler.js'
import { SandboxSnapshots } from './sandbox-snapshots.js'
import { SandboxTimeouts } from './sandbox-timeouts.js'

export type { ForkOutcome } from './sandbox-forks.js'
export type { CreateSandboxInput, PauseKind, SandboxNetworkInput } from './sandbox-lifecycle.js'
export type { MetricSample } from './sandbox-sampler.js'

export interface SandboxServiceOptions {
  config: Readonly<ServerConfig>
  log: Logger
  store: SqliteStore
  driver: Driver
  pool: WarmPool
  metrics: ServerMetrics
  /** A create's template name as the runtime knows it (built templates: their build id). */
  resolveTemplate?: (reference: string) => string
}

export class SandboxService {
  /** What the envd proxy reads: every live sandbox's target, and autoResume. */
  readonly registry: ProxyRegistry
  readonly #config: Readonly<ServerConfig>
  readonly #log: Logger
  readonly #store: SqliteStore
  readonly #driver: Driver
  readonly #pool: WarmPool
  readonly #live: LiveSandboxes
  readonly #timeouts: SandboxTimeouts
  readonly #sampler: SandboxSampler
  readonly #snapshots: SandboxSnapshots
  readonly #lifecycle: SandboxLifecycle
  #unsubscribe: (() => void) | undefined

  constructor(options: SandboxServiceOptions) {
    const { config, store, pool } = options
    const log = options.log.child({ component: 'server.sandboxes' })
    const mutex = new KeyedMutex()
    const live = new LiveSandboxes({ store, gauge: options.metrics.sandboxes, log })
    const timeouts = new SandboxTimeouts({
      live,
      mutex,
      log,
      defaultTimeoutS: config.defaultTimeoutS,
      maxTimeoutS: config.maxTimeoutS,
      // The lifecycle is made below; a timer cannot fire before it is.
      actions: {
        pause: (record) => this.#lifecycle.pauseNow(record, { memory: record.autoPauseMemory }),
        kill: (id) => this.#lifecycle.killNow(id),
      },
    })
    const snapshots = new SandboxSnapshots({ dataDir: config.dataDir, store, live, mutex, log })
    this.#config = config
    this.#log = log
    this.#store = store
    this.#driver = options.driver
    this.#pool = pool
    this.#live = live
    this.#timeouts = timeouts
    this.#snapshots = snapshots
    this.#sampler = new SandboxSampler({ live, log, intervalMs: config.metricsIntervalMs })
    this.#lifecycle = new SandboxLifecycle({
      config,
      log,
      pool,
      live,
      timeouts,
      snapshots,
      mutex,
      createSeconds: options.metrics.createSeconds,
      resolveTemplate: options.resolveTemplate ?? ((reference) => reference),
    })
    this.registry = createProxyRegistry(live, (id, timeoutS) => this.connect(id, timeoutS))
  }

  /**
   * Adopts what the runtime has running, reconciles the store with it (records whose sandbox
   * is gone are dropped; sandboxes the store does not know are destroyed), re-arms every
   * timeout from the stored end times, and starts the pool and the metrics sampler.
   */
  async start(): Promise<void> {
    this.#snapshots.start()
    this.#unsubscribe = this.#driver.onEvent((event) => {
      // Only the sandbox the table holds: not one a filesystem-only pause shut down, nor the
      // one a resume from its disk replaced.
      if (
        event.type === 'destroyed' &&
        this.#live.get(event.sandbox.id)?.sandbox === event.sandbox
      ) {
        this.#live.remove(event.sandbox.id, 'the sandbox ended')
      }
    })
    await reconcileAfterRestart({
      driver: this.#driver,
      store: this.#store,
      live: this.#live,
      timeouts: this.#timeouts,
      log: this.#log,
      dataDir: this.#config.dataDir,
    })
    this.#pool.start()
    this.#sampler.start()
  }

  /** A new sandbox, warm or cold ({@link SandboxLifecycle.create}). */
  create(
    input: CreateSandboxInput,
    options: { signal?: AbortSignal } = {},
  ): Promise<SandboxRecord> {
    return this.#lifecycle.create(input, options)
  }

  /** @throws SandboxNotFoundError (404) */
  get(id: string): SandboxRecord {
    return this.#live.require(id).record
  }

  /** Every sandbox, oldest first. */
  list(): SandboxRecord[] {
    return this.#live.records()
  }

  /** The runtime templates live sandboxes were made from (built templates: build ids). */
  templatesInUse(): Set<string> {
    return new Set(
      [...this.#live.values()].flatMap(
        (live) => live.sandbox?.info.template ?? live.record.filesystemPause?.template ?? [],
      ),
    )
  }

  /** Ready sandboxes in the warm pool, per template. */
  poolReady(): Record<string, number> {
    return this.#pool.readyCounts()
  }

  counts(): { running: number; paused: number } {
    return this.#live.counts()
  }

  /** @throws SandboxNotFoundError (404) */
  kill(id: string): Promise<void> {
    return this.#lifecycle.kill(id)
  }

  /**
   * Pauses in memory, or keeping the filesystem only ({@link SandboxLifecycle.pause}).
   * @throws SandboxNotFoundError (404), FailedPreconditionError (409) when already paused
   */
  pause(id: string, kind?: PauseKind): Promise<void> {
    return this.#lifecycle.pause(id, kind)
  }

  /** Resumes a paused sandbox or extends a running one's lifetime ({@link SandboxLifecycle.connect}). */
  connect(
    id: string,
    timeoutS: number | undefined,
    kind?: PauseKind,
  ): Promise<{ record: SandboxRecord; resumed: boolean }> {
    return this.#lifecycle.connect(id, timeoutS, kind)
  }

  /** A new lifetime from now ({@link SandboxLifecycle.setTimeout}). */
  setTimeout(id: string, timeoutS: number): Promise<void> {
    return this.#lifecycle.setTimeout(id, timeoutS)
  }

  /** New egress rules ({@link SandboxLifecycle.updateNetwork}). */
  updateNetwork(id: string, network: SandboxNetworkInput): Promise<void> {
    return this.#lifecycle.updateNetwork(id, network)
  }

  /** Metric samples in a time range ({@link SandboxSampler.samples}). */
  metrics(id: string, startMs?: number, endMs?: number): Promise<MetricSample[]> {
    return this.#sampler.samples(id, startMs, endMs)
  }

  /** A snapshot usable as a template id ({@link SandboxSnapshots.take}). */
  snapshot(id: string, name?: string): Promise<SnapshotRecord> {
    return this.#snapshots.take(id, name)
  }

  /** Snapshots, oldest first, filtered by sandbox or name. */
  listSnapshots(
    filter: { sandboxId?: string | undefined; name?: string | undefined } = {},
  ): SnapshotRecord[] {
    return this.#snapshots.list(filter)
  }

  /** @throws NotFoundError (404) */
  deleteSnapshot(idOrName: string): void {
    this.#snapshots.delete(idOrName)
  }

  /** Copies of a sandbox, each made or failed on its own ({@link forkSandbox}). */
  fork(id: string, count: number, timeoutS: number | undefined): Promise<ForkOutcome[]> {
    return forkSandbox(
      {
        live: this.#live,
        snapshots: this.#snapshots,
        create: (input) => this.create(input),
        // A sandbox that asks for nothing gets the server's settings.
        defaultEgress: this.#config.network.internet ? openPolicy : closedPolicy,
      },
      id,
      count,
      timeoutS,
    )
  }

  /**
   * Stops timers, sampler and pool. Sandboxes keep running for the next start to adopt,
   * unless `killSandboxes`.
   */
  async close({ killSandboxes }: { killSandboxes: boolean }): Promise<void> {
    this.#sampler.stop()
    this.#timeouts.close()
    await this.#pool.close()
    if (killSandboxes) {
      await Promise.allSettled(
        [...this.#live.values()].map((live) => this.#lifecycle.killNow(live.record.id)),
      )
    }
    this.#unsubscribe?.()
    this.#live.clear()
  }
}
