/**
 * The server's sandbox lifecycle: create (from the warm pool or a snapshot), connect/resume,
 * pause, kill, timeouts that outlive restarts, snapshots and forks, metrics samples, and the
 * reconciliation of the store with what the runtime finds running after a restart.
 */
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import {
  isIdlePooled,
  type Driver,
  type DriverKind,
  type Sandbox,
  type SandboxSnapshot,
  type WarmPool,
} from '@sandcell/runtime'
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  SandboxNotFoundError,
  errorMessage,
  newSandboxId,
  newSecret,
  type Logger,
  type SandboxId,
} from '@sandcell/shared'
import type { ServerConfig } from '../config/schema.js'
import type { ProxyRegistry, ProxyTarget } from '../envd-proxy/proxy-target.js'
import type { ServerMetrics } from '../metrics.js'
import { closedPolicy, openPolicy, type EgressPolicy } from '@sandcell/network'
import type {
  OnTimeout,
  SandboxNetworkRecord,
  SandboxRecord,
  SnapshotRecord,
  SqliteStore,
} from '../store/sqlite-store.js'
import { initAgent } from './agent-init.js'
import { KeyedMutex } from './keyed-mutex.js'

/** Label marking sandboxes this server owns (CLI-run sandboxes in the same data dir are not). */
export const ownerLabel = 'sandcell.owner'
const serverOwner = 'server'
/** Longest delay a Node timer takes; longer timeouts are re-armed when it fires. */
const maxTimerMs = 2 ** 31 - 1
/** Metric samples kept per sandbox (an hour at the default 5 s interval). */
const maxSamples = 720

export interface CreateSandboxInput {
  templateId: string
  /** The isolation asked for; absent: the template's or the server's default. */
  driver?: DriverKind | undefined
  timeoutS?: number | undefined
  metadata?: Record<string, string> | undefined
  envVars?: Record<string, string> | undefined
  onTimeout: OnTimeout
  autoResume: boolean
  network: SandboxNetworkInput
}

/** A sandbox's network as a request asked for it, validated. */
export interface SandboxNetworkInput {
  /** The egress rules the runtime enforces. */
  egress: EgressPolicy
  /** The settings as stored and returned (E2B's names), or null when the client gave none. */
  record: SandboxNetworkRecord | null
  allowInternetAccess: boolean | null
}

export interface MetricSample {
  /** Unix ms. */
  timestampMs: number
  cpuCount: number
  cpuUsedPct: number
  memUsed: number
  memTotal: number
  memCache: number
  diskUsed: number
  diskTotal: number
}

export type ForkOutcome = { record: SandboxRecord } | { error: Error }

export interface SandboxServiceOptions {
  config: Readonly<ServerConfig>
  log: Logger
  store: SqliteStore
  driver: Driver
  pool: WarmPool
  metrics: ServerMetrics
}

interface CpuReading {
  atMs: number
  cpuUsageUs: number
}

export class SandboxService {
  readonly registry: ProxyRegistry
  readonly #config: Readonly<ServerConfig>
  readonly #log: Logger
  readonly #store: SqliteStore
  readonly #driver: SandboxServiceOptions['driver']
  readonly #pool: WarmPool
  readonly #metrics: ServerMetrics
  readonly #live = new Map<string, Sandbox>()
  readonly #proxyTargets = new Map<string, ProxyTarget>()
  readonly #timers = new Map<string, NodeJS.Timeout>()
  readonly #samples = new Map<string, MetricSample[]>()
  readonly #lastCpu = new Map<string, CpuReading>()
  readonly #mutex = new KeyedMutex()
  readonly #snapshotsDir: string
  #sampler: NodeJS.Timeout | undefined
  #unsubscribe: (() => void) | undefined
  #closed = false

  constructor(options: SandboxServiceOptions) {
    this.#config = options.config
    this.#log = options.log.child({ component: 'server.sandboxes' })
    this.#store = options.store
    this.#driver = options.driver
    this.#pool = options.pool
    this.#metrics = options.metrics
    this.#snapshotsDir = join(options.config.dataDir, 'snapshots')
    this.registry = {
      get: (id) => this.#target(id),
      list: () => this.#targets(),
      resume: async (id) => {
        const record = this.get(id)
        if (record.state === 'paused') {
          await this.connect(id, Math.ceil(Math.max(1000, record.endAt - record.startedAt) / 1000))
        }
      },
    }
  }

  /**
   * The proxy asks on every request: answered from memory, kept in step with the store by
   * every change of a sandbox's state (#track / #forget).
   */
  #target(id: string): ProxyTarget | undefined {
    return this.#proxyTargets.get(id)
  }

  #targets(): Iterable<ProxyTarget> {
    return this.#proxyTargets.values()
  }

  #track(record: SandboxRecord, sandbox: Sandbox): void {
    const network = sandbox.info.network
    this.#proxyTargets.set(record.id, {
      sandboxId: record.id,
      socketPath: sandbox.info.agentSocket,
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
      ...(record.network?.httpsPorts === undefined
        ? {}
        : { httpsPorts: record.network.httpsPorts }),
    })
  }

  #setState(id: string, state: SandboxRecord['state']): void {
    const target = this.#proxyTargets.get(id)
    if (target !== undefined) {
      target.state = state
    }
  }

  /**
   * Adopts what the runtime has running, reconciles the store with it (records whose sandbox
   * is gone are dropped; sandboxes the store does not know are destroyed), re-arms every
   * timeout from the stored end times, and starts the pool and the metrics sampler.
   */
  async start(): Promise<void> {
    mkdirSync(this.#snapshotsDir, { recursive: true, mode: 0o700 })
    this.#unsubscribe = this.#driver.onEvent((event) => {
      if (event.type === 'destroyed') {
        this.#forget(event.sandbox.id, 'the sandbox ended')
      }
    })
    const adopted = new Map((await this.#driver.adopt()).map((s) => [s.id as string, s]))
    for (const record of this.#store.listSandboxes()) {
      const sandbox = adopted.get(record.id)
      adopted.delete(record.id)
      if (sandbox === undefined) {
        this.#log.warn({ sandboxId: record.id }, 'sandbox vanished while the server was down')
        this.#store.deleteSandbox(record.id)
        continue
      }
      this.#live.set(record.id, sandbox)
      // The runtime is the truth about running or paused (a crash may fall between the two).
      const state = sandbox.state === 'paused' ? 'paused' : 'running'
      if (state !== record.state) {
        this.#store.updateSandbox(record.id, { state })
      }
      this.#track({ ...record, state }, sandbox)
      if (state === 'running') {
        this.#schedule(record.id, record.endAt)
      }
      await this.#reloadNetwork(sandbox)
      this.#log.info({ sandboxId: record.id, state }, 'sandbox adopted')
    }
    for (const sandbox of adopted.values()) {
      const owner = sandbox.info.labels[ownerLabel]
      if (isIdlePooled(sandbox) || owner === serverOwner) {
        this.#log.info({ sandboxId: sandbox.id }, 'destroying a sandbox the store does not know')
        await sandbox
          .destroy({ reason: 'unknown to the store after a restart' })
          .catch((err: unknown) =>
            this.#log.error({ err, sandboxId: sandbox.id }, 'cannot destroy an unknown sandbox'),
          )
      }
    }
    this.#pool.start()
    this.#sampler = setInterval(() => void this.#sampleAll(), this.#config.metricsIntervalMs)
    this.#sampler.unref()
    this.#updateGauges()
  }

  /**
   * An adopted sandbox's rules name the DNS and proxy ports of the process that made it: load
   * them again for this one. A failure leaves the sandbox running with its old rules in force.
   */
  async #reloadNetwork(sandbox: Sandbox): Promise<void> {
    const network = sandbox.info.network
    if (network === undefined) {
      return
    }
    await sandbox
      .setNetwork(network.egress)
      .catch((err: unknown) =>
        this.#log.warn(
          { err: errorMessage(err), sandboxId: sandbox.id },
          'cannot reload the network rules of an adopted sandbox',
        ),
      )
  }

  /** Drops a sandbox that ended from the store and every table; safe to call twice. */
  #forget(id: string, why: string): void {
    this.#proxyTargets.delete(id)
    if (this.#live.delete(id)) {
      this.#log.info({ sandboxId: id, why }, 'sandbox removed')
    }
    clearTimeout(this.#timers.get(id))
    this.#timers.delete(id)
    this.#samples.delete(id)
    this.#lastCpu.delete(id)
    this.#store.deleteSandbox(id as SandboxId)
    this.#updateGauges()
  }

  #updateGauges(): void {
    const records = this.#store.listSandboxes()
    this.#metrics.sandboxes.set(
      { state: 'running' },
      records.filter((r) => r.state === 'running').length,
    )
    this.#metrics.sandboxes.set(
      { state: 'paused' },
      records.filter((r) => r.state === 'paused').length,
    )
  }

  #timeoutMs(timeoutS: number | undefined): number {
    const seconds = timeoutS ?? this.#config.defaultTimeoutS
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > this.#config.maxTimeoutS) {
      throw new InvalidArgumentError(
        `timeout must be a whole number of seconds between 1 and ${this.#config.maxTimeoutS} (got ${timeoutS})`,
      )
    }
    return seconds * 1000
  }

  /** Arms the timer that ends the sandbox at `endAt`; re-arms itself for very long timeouts. */
  #schedule(id: string, endAt: number): void {
    clearTimeout(this.#timers.get(id))
    const delay = Math.max(0, Math.min(endAt - Date.now(), maxTimerMs))
    const timer = setTimeout(() => {
      void this.#expire(id).catch((err: unknown) =>
        this.#log.error({ err, sandboxId: id }, 'timeout handling failed'),
      )
    }, delay)
    timer.unref()
    this.#timers.set(id, timer)
  }

  #expire(id: string): Promise<void> {
    return this.#mutex.run(id, async () => {
      const record = this.#store.getSandbox(id)
      if (record === undefined || record.state !== 'running') {
        return
      }
      if (record.endAt > Date.now()) {
        this.#schedule(id, record.endAt)
        return
      }
      if (record.onTimeout === 'pause') {
        this.#log.info({ sandboxId: id }, 'timeout reached: pausing')
        await this.#pauseNow(record)
      } else {
        this.#log.info({ sandboxId: id }, 'timeout reached: killing')
        await this.#killNow(id)
      }
    })
  }

  #resolveSource(templateId: string): { template: string; fromSnapshot?: SandboxSnapshot } {
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
        dir: join(this.#snapshotsDir, snapshot.id),
        memory: false,
      },
    }
  }

  /**
   * Creates a sandbox: a hand-over from the warm pool when one is ready, else a cold create;
   * then the agent gets its env vars and a fresh access token, and the store a record.
   * @throws TemplateNotFoundError (404), InvalidArgumentError (400), DriverError
   */
  async create(
    input: CreateSandboxInput,
    options: { signal?: AbortSignal } = {},
  ): Promise<SandboxRecord> {
    const timeoutMs = this.#timeoutMs(input.timeoutS)
    const source = this.#resolveSource(input.templateId)
    const started = performance.now()
    const { sandbox } = await this.#pool.acquire(
      {
        template: source.template,
        limits: { ...this.#config.limits },
        labels: { [ownerLabel]: serverOwner },
        egress: input.network.egress,
        ...(input.driver === undefined ? {} : { driver: input.driver }),
        ...(source.fromSnapshot === undefined ? {} : { fromSnapshot: source.fromSnapshot }),
      },
      options,
    )
    const envdAccessToken = newSecret()
    const envVars = input.envVars ?? {}
    try {
      await initAgent(sandbox.info.agentSocket, { envVars, accessToken: envdAccessToken })
    } catch (err) {
      await sandbox.destroy({ reason: 'the agent refused its init', cause: err })
      throw err
    }
    const now = Date.now()
    const record: SandboxRecord = {
      id: sandbox.id,
      templateId: input.templateId,
      driver: sandbox.info.driver,
      state: 'running',
      clientId: 'sandcell',
      metadata: input.metadata ?? {},
      envVars,
      envdAccessToken,
      limits: sandbox.info.limits,
      startedAt: now,
      endAt: now + timeoutMs,
      onTimeout: input.onTimeout,
      autoResume: input.autoResume,
      allowInternetAccess: input.network.allowInternetAccess,
      network: input.network.record,
      trafficAccessToken: input.network.record?.allowPublicTraffic === false ? newSecret() : null,
    }
    this.#store.insertSandbox(record)
    this.#live.set(record.id, sandbox)
    this.#track(record, sandbox)
    this.#schedule(record.id, record.endAt)
    this.#metrics.createSeconds.observe((performance.now() - started) / 1000)
    this.#updateGauges()
    this.#log.info({ sandboxId: record.id, template: input.templateId }, 'sandbox created')
    return record
  }

  /** @throws SandboxNotFoundError (404) */
  get(id: string): SandboxRecord {
    const record = this.#store.getSandbox(id)
    if (record === undefined || !this.#live.has(id)) {
      throw new SandboxNotFoundError(id)
    }
    return record
  }

  list(): SandboxRecord[] {
    return this.#store.listSandboxes().filter((record) => this.#live.has(record.id))
  }

  /** Ready sandboxes in the warm pool, per template. */
  poolReady(): Record<string, number> {
    return this.#pool.readyCounts()
  }

  counts(): { running: number; paused: number } {
    const records = this.list()
    return {
      running: records.filter((r) => r.state === 'running').length,
      paused: records.filter((r) => r.state === 'paused').length,
    }
  }

  #sandbox(id: string): Sandbox {
    const sandbox = this.#live.get(id)
    if (sandbox === undefined) {
      throw new SandboxNotFoundError(id)
    }
    return sandbox
  }

  async #killNow(id: string): Promise<void> {
    const sandbox = this.#live.get(id)
    this.#forget(id, 'killed')
    await sandbox?.destroy({ reason: 'killed' })
  }

  /** @throws SandboxNotFoundError (404) */
  kill(id: string): Promise<void> {
    return this.#mutex.run(id, async () => {
      this.get(id)
      await this.#killNow(id)
    })
  }

  async #pauseNow(record: SandboxRecord): Promise<void> {
    await this.#sandbox(record.id).pause()
    clearTimeout(this.#timers.get(record.id))
    this.#timers.delete(record.id)
    this.#store.updateSandbox(record.id, { state: 'paused' })
    this.#setState(record.id, 'paused')
    this.#updateGauges()
  }

  /** @throws SandboxNotFoundError (404), FailedPreconditionError (409) when already paused */
  pause(id: string): Promise<void> {
    return this.#mutex.run(id, async () => {
      const record = this.get(id)
      if (record.state === 'paused') {
        throw new FailedPreconditionError(`sandbox ${id} is already paused`)
      }
      await this.#pauseNow(record)
      this.#log.info({ sandboxId: id }, 'sandbox paused')
    })
  }

  /**
   * Connects to a sandbox: a paused one is resumed with a fresh lifetime of `timeoutS`; a
   * running one only has its lifetime extended (never shortened).
   * @returns the record and whether it was resumed (the API answers 201 then, 200 otherwise)
   */
  connect(
    id: string,
    timeoutS: number | undefined,
  ): Promise<{ record: SandboxRecord; resumed: boolean }> {
    return this.#mutex.run(id, async () => {
      const record = this.get(id)
      const until = Date.now() + this.#timeoutMs(timeoutS)
      if (record.state === 'paused') {
        await this.#sandbox(id).resume()
        this.#store.updateSandbox(record.id, { state: 'running', endAt: until })
        this.#setState(id, 'running')
        this.#schedule(id, until)
        this.#updateGauges()
        this.#log.info({ sandboxId: id }, 'sandbox resumed')
        return { record: this.get(id), resumed: true }
      }
      if (until > record.endAt) {
        this.#store.updateSandbox(record.id, { endAt: until })
        this.#schedule(id, until)
      }
      return { record: this.get(id), resumed: false }
    })
  }

  /**
   * Sets the lifetime anew from now (it may shorten it).
   * @throws SandboxNotFoundError (404), FailedPreconditionError (409) for a paused sandbox
   */
  setTimeout(id: string, timeoutS: number): Promise<void> {
    return this.#mutex.run(id, () => {
      const record = this.get(id)
      if (record.state === 'paused') {
        throw new FailedPreconditionError(
          `sandbox ${id} is paused; connect to it to resume it with a timeout`,
        )
      }
      const until = Date.now() + this.#timeoutMs(timeoutS)
      this.#store.updateSandbox(record.id, { endAt: until })
      this.#schedule(id, until)
      return Promise.resolve()
    })
  }

  /**
   * Replaces a sandbox's egress rules (E2B's updateNetwork): new connections follow them once
   * this resolves; the ingress settings stay as created.
   * @throws SandboxNotFoundError (404), FailedPreconditionError (409) without a network
   */
  updateNetwork(id: string, network: SandboxNetworkInput): Promise<void> {
    return this.#mutex.run(id, async () => {
      this.get(id)
      await this.#sandbox(id).setNetwork(network.egress)
      this.#store.updateSandbox(id as SandboxId, {
        network: network.record,
        allowInternetAccess: network.allowInternetAccess,
      })
      this.#log.info({ sandboxId: id }, 'sandbox network rules replaced')
    })
  }

  /** The egress of a sandbox that asks for nothing, by the server's settings. */
  #defaultEgress(): EgressPolicy {
    return this.#config.network.internet ? openPolicy : closedPolicy
  }

  async #sampleAll(): Promise<void> {
    for (const record of this.list()) {
      if (record.state !== 'running' || this.#closed) {
        continue
      }
      await this.#sample(record).catch((err: unknown) =>
        this.#log.debug({ err: errorMessage(err), sandboxId: record.id }, 'cannot sample metrics'),
      )
    }
  }

  async #sample(record: SandboxRecord): Promise<MetricSample> {
    const stats = await this.#sandbox(record.id).stats()
    const now = Date.now()
    const cpuCount = Math.max(1, Math.ceil(record.limits.cpus))
    const last = this.#lastCpu.get(record.id)
    const cpuUsedPct =
      last === undefined || now <= last.atMs
        ? 0
        : Math.min(
            100,
            ((stats.cpuUsageUs - last.cpuUsageUs) / ((now - last.atMs) * 1000 * cpuCount)) * 100,
          )
    this.#lastCpu.set(record.id, { atMs: now, cpuUsageUs: stats.cpuUsageUs })
    const sample: MetricSample = {
      timestampMs: now,
      cpuCount,
      cpuUsedPct: Math.round(Math.max(0, cpuUsedPct) * 100) / 100,
      memUsed: stats.memoryBytes,
      memTotal: stats.memoryLimitBytes,
      memCache: 0,
      diskUsed: stats.diskUsedBytes,
      diskTotal: stats.diskTotalBytes,
    }
    const samples = this.#samples.get(record.id) ?? []
    samples.push(sample)
    if (samples.length > maxSamples) {
      samples.splice(0, samples.length - maxSamples)
    }
    this.#samples.set(record.id, samples)
    return sample
  }

  /**
   * Metric samples between `startMs` and `endMs` (Unix ms); a running sandbox with none yet
   * is sampled now, so a fresh sandbox never answers an empty list.
   * @throws SandboxNotFoundError (404)
   */
  async metrics(id: string, startMs?: number, endMs?: number): Promise<MetricSample[]> {
    const record = this.get(id)
    if (record.state === 'running' && (this.#samples.get(id)?.length ?? 0) === 0) {
      await this.#sample(record)
    }
    return (this.#samples.get(id) ?? []).filter(
      (s) =>
        (startMs === undefined || s.timestampMs >= startMs) &&
        (endMs === undefined || s.timestampMs <= endMs),
    )
  }

  /**
   * Saves a sandbox's filesystem as a snapshot that `create` accepts as a template id.
   * @throws SandboxNotFoundError (404), AlreadyExistsError-like InvalidArgumentError for a taken name
   */
  snapshot(id: string, name?: string): Promise<SnapshotRecord> {
    return this.#mutex.run(id, async () => {
      const record = this.get(id)
      if (name !== undefined && this.#store.findSnapshot(name) !== undefined) {
        throw new InvalidArgumentError(`a snapshot named ${JSON.stringify(name)} exists already`)
      }
      const snapshotId = newSandboxId()
      const dir = join(this.#snapshotsDir, snapshotId)
      const saved = await this.#sandbox(id).snapshot({ dir })
      const snapshot: SnapshotRecord = {
        id: snapshotId,
        sandboxId: id,
        names: name === undefined ? [] : [name],
        templateId: saved.template,
        driver: saved.driver,
        limits: record.limits,
        envVars: record.envVars,
        createdAt: Date.now(),
      }
      this.#store.insertSnapshot(snapshot)
      this.#log.info({ sandboxId: id, snapshotId }, 'snapshot taken')
      return snapshot
    })
  }

  listSnapshots(
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
  deleteSnapshot(idOrName: string): void {
    const snapshot = this.#store.findSnapshot(idOrName)
    if (snapshot === undefined) {
      throw new NotFoundError(`snapshot ${idOrName} does not exist`)
    }
    this.#store.deleteSnapshot(snapshot.id)
    rmSync(join(this.#snapshotsDir, snapshot.id), { recursive: true, force: true })
  }

  /**
   * Forks a sandbox `count` times: a snapshot of its filesystem, then that many new sandboxes
   * from it, with the original's env vars, metadata and lifecycle (processes are not carried
   * over by the container driver). Each fork succeeds or fails on its own.
   */
  async fork(id: string, count: number, timeoutS: number | undefined): Promise<ForkOutcome[]> {
    const record = this.get(id)
    if (!Number.isInteger(count) || count < 1 || count > 100) {
      throw new InvalidArgumentError(`count must be between 1 and 100 (got ${count})`)
    }
    const egress = this.#live.get(id)?.info.network?.egress
    const snapshot = await this.snapshot(id)
    try {
      return await Promise.all(
        Array.from({ length: count }, async (): Promise<ForkOutcome> => {
          try {
            const forked = await this.create({
              templateId: snapshot.id,
              timeoutS,
              metadata: record.metadata,
              envVars: record.envVars,
              onTimeout: record.onTimeout,
              autoResume: record.autoResume,
              network: {
                egress: egress ?? this.#defaultEgress(),
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
      this.deleteSnapshot(snapshot.id)
    }
  }

  /**
   * Stops timers, sampler and pool. Sandboxes keep running for the next start to adopt,
   * unless `killSandboxes`.
   */
  async close({ killSandboxes }: { killSandboxes: boolean }): Promise<void> {
    this.#closed = true
    clearInterval(this.#sampler)
    for (const timer of this.#timers.values()) {
      clearTimeout(timer)
    }
    this.#timers.clear()
    await this.#pool.close()
    if (killSandboxes) {
      await Promise.allSettled([...this.#live.keys()].map((id) => this.#killNow(id)))
    }
    this.#unsubscribe?.()
    this.#live.clear()
    this.#proxyTargets.clear()
  }
}
