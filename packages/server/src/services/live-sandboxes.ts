/**
 * The one in-memory table of the sandboxes the server manages: per sandbox its runtime handle,
 * its record, the proxy's view of it, its timeout timer and its metric samples. Every change
 * of a sandbox goes through here, which writes the store (the durable truth across restarts)
 * and keeps the proxy's view and the running/paused gauges in step.
 */
import type { Sandbox } from '@sandcell/runtime'
import { BugError, SandboxNotFoundError, type Logger, type SandboxId } from '@sandcell/shared'
import type { ProxyTarget } from '../envd-proxy/proxy-target.js'
import type { ServerMetrics } from '../metrics.js'
import type { SandboxRecord, SandboxRecordState, SqliteStore } from '../store/sqlite-store.js'
import type { CpuReading, MetricSample } from './sandbox-sampler.js'

/** A sandbox the server manages, as every part of the service shares it. */
export interface LiveSandbox {
  /** The runtime's handle; none while paused keeping the filesystem only (nothing runs). */
  readonly sandbox: Sandbox | undefined
  /** The record as the store holds it; replaced (never mutated) on every change. */
  readonly record: SandboxRecord
  /** What the proxy knows of the sandbox, derived from the record and the runtime's info. */
  readonly target: ProxyTarget
  /** Ends the sandbox at `record.endAt` while it runs (sandbox-timeouts.ts). */
  timer: NodeJS.Timeout | undefined
  /** Metric samples, oldest first (sandbox-sampler.ts). */
  samples: MetricSample[]
  /** The CPU counter at the last sample, for the next sample's usage. */
  lastCpu: CpuReading | undefined
}

/** What a change may set on a record (the store's updatable fields). */
export type SandboxPatch = Parameters<SqliteStore['updateSandbox']>[1]

interface Entry extends LiveSandbox {
  sandbox: Sandbox | undefined
  record: SandboxRecord
  target: ProxyTarget
}

/** Dependencies of {@link LiveSandboxes}. */
export interface LiveSandboxesOptions {
  store: SqliteStore
  /** Set to the running and paused counts on every change. */
  gauge: ServerMetrics['sandboxes']
  log: Logger
}

function proxyTargetOf(record: SandboxRecord, sandbox: Sandbox | undefined): ProxyTarget {
  const network = sandbox?.info.network
  return {
    sandboxId: record.id,
    socketPath: sandbox?.info.agentSocket ?? '',
    envdAccessToken: record.envdAccessToken,
    state: record.state,
    autoResume: record.autoResume,
    ...(network === undefined ? {} : { portAddress: network.address }),
    ...(record.trafficAccessToken === null
      ? {}
      : { trafficAccessToken: record.trafficAccessToken }),
    ...(record.network?.maskRequestHost === undefined
      ? {}
      : { maskRequestHost: record.network.maskRequestHost }),
    ...(record.network?.httpsPorts === undefined ? {} : { httpsPorts: record.network.httpsPorts }),
  }
}

function byStartThenId(a: SandboxRecord, b: SandboxRecord): number {
  return a.startedAt - b.startedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
}

export class LiveSandboxes {
  readonly #entries = new Map<string, Entry>()
  readonly #counts: Record<SandboxRecordState, number> = { running: 0, paused: 0 }
  readonly #store: SqliteStore
  readonly #gauge: ServerMetrics['sandboxes']
  readonly #log: Logger

  constructor(options: LiveSandboxesOptions) {
    this.#store = options.store
    this.#gauge = options.gauge
    this.#log = options.log
    this.#publishCounts()
  }

  /** A new sandbox: stored, then tracked. */
  insert(record: SandboxRecord, sandbox: Sandbox): LiveSandbox {
    this.#store.insertSandbox(record)
    return this.adopt(record, sandbox)
  }

  /**
   * A sandbox the store has already (found again after a restart): tracked. No runtime handle
   * for one paused keeping its filesystem only.
   */
  adopt(record: SandboxRecord, sandbox: Sandbox | undefined): LiveSandbox {
    const entry: Entry = {
      sandbox,
      record,
      target: proxyTargetOf(record, sandbox),
      timer: undefined,
      samples: [],
      lastCpu: undefined,
    }
    this.#entries.set(record.id, entry)
    this.#count(record.state, 1)
    return entry
  }

  /**
   * Changes a sandbox's record in the store and here, and what derives from it.
   * @throws BugError for a sandbox the server does not manage
   */
  update(id: string, patch: SandboxPatch): SandboxRecord {
    const entry = this.#entries.get(id)
    if (entry === undefined) {
      throw new BugError(`updated a sandbox the server does not manage: ${id}`)
    }
    return this.replaceSandbox(id, entry.sandbox, patch)
  }

  /**
   * Changes the runtime handle with the record: a filesystem-only pause drops it, a resume from
   * the disk brings the new sandbox (same id) that boots on it.
   * @throws BugError for a sandbox the server does not manage
   */
  replaceSandbox(id: string, sandbox: Sandbox | undefined, patch: SandboxPatch): SandboxRecord {
    const entry = this.#entries.get(id)
    if (entry === undefined) {
      throw new BugError(`updated a sandbox the server does not manage: ${id}`)
    }
    this.#store.updateSandbox(entry.record.id, patch)
    const before = entry.record.state
    entry.sandbox = sandbox
    entry.record = { ...entry.record, ...patch }
    entry.target = proxyTargetOf(entry.record, entry.sandbox)
    if (entry.record.state !== before) {
      this.#count(before, -1)
      this.#count(entry.record.state, 1)
    }
    return entry.record
  }

  /**
   * Drops a sandbox that ended (its timer stops, its record leaves the store); safe to call
   * twice and for ids the server never managed.
   * @returns what was tracked, to destroy it
   */
  remove(id: string, why: string): LiveSandbox | undefined {
    const entry = this.#entries.get(id)
    if (entry !== undefined) {
      this.#entries.delete(id)
      clearTimeout(entry.timer)
      this.#count(entry.record.state, -1)
      this.#log.info({ sandboxId: id, why }, 'sandbox removed')
    }
    this.#store.deleteSandbox(id as SandboxId)
    return entry
  }

  get(id: string): LiveSandbox | undefined {
    return this.#entries.get(id)
  }

  /** @throws SandboxNotFoundError (404) */
  require(id: string): LiveSandbox {
    const entry = this.#entries.get(id)
    if (entry === undefined) {
      throw new SandboxNotFoundError(id)
    }
    return entry
  }

  /** Every tracked sandbox, in no particular order. */
  values(): IterableIterator<LiveSandbox> {
    return this.#entries.values()
  }

  /** Every record, oldest first (as the store lists them). */
  records(): SandboxRecord[] {
    return [...this.#entries.values()].map((entry) => entry.record).sort(byStartThenId)
  }

  counts(): { running: number; paused: number } {
    return { ...this.#counts }
  }

  /** Forgets every sandbox without touching the store (they stay for the next start). */
  clear(): void {
    this.#entries.clear()
    this.#counts.running = 0
    this.#counts.paused = 0
    this.#publishCounts()
  }

  #count(state: SandboxRecordState, delta: number): void {
    this.#counts[state] += delta
    this.#publishCounts()
  }

  #publishCounts(): void {
    this.#gauge.set({ state: 'running' }, this.#counts.running)
    this.#gauge.set({ state: 'paused' }, this.#counts.paused)
  }
}
