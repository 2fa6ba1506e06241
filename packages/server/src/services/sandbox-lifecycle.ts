/**
 * A sandbox's life as the API drives it: create (a warm pool hand-over or a cold create, from a
 * template or a snapshot), connect (resume or extend), pause, kill, new lifetimes and network
 * rules. Each step holds the sandbox's lock and goes through the live table.
 */
import type { DriverKind, WarmPool } from '@sandcell/runtime'
import type { EgressPolicy } from '@sandcell/network'
import { FailedPreconditionError, newSecret, type Logger } from '@sandcell/shared'
import type { ServerConfig } from '../config/schema.js'
import type { ServerMetrics } from '../metrics.js'
import type { OnTimeout, SandboxNetworkRecord, SandboxRecord } from '../store/sqlite-store.js'
import type { KeyedMutex } from './keyed-mutex.js'
import type { LiveSandboxes } from './live-sandboxes.js'
import { serverOwnerLabels } from './restart-reconciliation.js'
import type { SandboxSnapshots } from './sandbox-snapshots.js'
import type { SandboxTimeouts } from './sandbox-timeouts.js'

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

/** Dependencies of {@link SandboxLifecycle}. */
export interface SandboxLifecycleOptions {
  config: Readonly<ServerConfig>
  log: Logger
  pool: WarmPool
  live: LiveSandboxes
  timeouts: SandboxTimeouts
  snapshots: SandboxSnapshots
  /** The per-sandbox lock: one change of a sandbox at a time, in arrival order. */
  mutex: KeyedMutex
  createSeconds: ServerMetrics['createSeconds']
  /**
   * The runtime's name of the template a create names: a built template's ready build, else
   * the name itself (a built-in). @throws NotFoundError for a known template without that tag
   */
  resolveTemplate: (reference: string) => string
}

export class SandboxLifecycle {
  readonly #config: Readonly<ServerConfig>
  readonly #log: Logger
  readonly #pool: WarmPool
  readonly #live: LiveSandboxes
  readonly #timeouts: SandboxTimeouts
  readonly #snapshots: SandboxSnapshots
  readonly #mutex: KeyedMutex
  readonly #createSeconds: ServerMetrics['createSeconds']
  readonly #resolveTemplate: (reference: string) => string

  constructor(options: SandboxLifecycleOptions) {
    this.#config = options.config
    this.#log = options.log
    this.#pool = options.pool
    this.#live = options.live
    this.#timeouts = options.timeouts
    this.#snapshots = options.snapshots
    this.#mutex = options.mutex
    this.#createSeconds = options.createSeconds
    this.#resolveTemplate = options.resolveTemplate
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
    const timeoutMs = this.#timeouts.lifetimeMs(input.timeoutS)
    const source = this.#snapshots.sourceOf(input.templateId)
    const started = performance.now()
    const template =
      source.fromSnapshot === undefined ? this.#resolveTemplate(source.template) : source.template
    const { sandbox } = await this.#pool.acquire(
      {
        template,
        limits: { ...this.#config.limits },
        labels: { ...serverOwnerLabels },
        egress: input.network.egress,
        ...(input.driver === undefined ? {} : { driver: input.driver }),
        ...(source.fromSnapshot === undefined ? {} : { fromSnapshot: source.fromSnapshot }),
      },
      options,
    )
    const envdAccessToken = newSecret()
    const envVars = input.envVars ?? {}
    try {
      // A built template's env, user and workdir stay under the create's own env vars.
      const defaults = sandbox.info.templateDefaults
      await sandbox.connect().init({
        envVars: { ...defaults?.env, ...envVars },
        accessToken: envdAccessToken,
        ...(defaults === undefined ? {} : { defaultUser: defaults.user }),
        ...(defaults?.workdir === undefined ? {} : { defaultWorkdir: defaults.workdir }),
      })
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
    this.#live.insert(record, sandbox)
    this.#timeouts.schedule(record.id, record.endAt)
    this.#createSeconds.observe((performance.now() - started) / 1000)
    this.#log.info({ sandboxId: record.id, template: input.templateId }, 'sandbox created')
    return record
  }

  /**
   * Connects to a sandbox: a paused one is resumed with a fresh lifetime of `timeoutS`; a
   * running one only has its lifetime extended (never shortened).
   * @returns the record and whether it was resumed (the API answers 201 then, 200 otherwise)
   * @throws SandboxNotFoundError (404), InvalidArgumentError (400) for a bad timeout
   */
  connect(
    id: string,
    timeoutS: number | undefined,
  ): Promise<{ record: SandboxRecord; resumed: boolean }> {
    return this.#mutex.run(id, async () => {
      const live = this.#live.require(id)
      const until = Date.now() + this.#timeouts.lifetimeMs(timeoutS)
      if (live.record.state === 'paused') {
        await live.sandbox.resume()
        const record = this.#live.update(id, { state: 'running', endAt: until })
        this.#timeouts.schedule(id, until)
        this.#log.info({ sandboxId: id }, 'sandbox resumed')
        return { record, resumed: true }
      }
      if (until > live.record.endAt) {
        this.#live.update(id, { endAt: until })
        this.#timeouts.schedule(id, until)
      }
      return { record: live.record, resumed: false }
    })
  }

  /** @throws SandboxNotFoundError (404), FailedPreconditionError (409) when already paused */
  pause(id: string): Promise<void> {
    return this.#mutex.run(id, async () => {
      const { record } = this.#live.require(id)
      if (record.state === 'paused') {
        throw new FailedPreconditionError(`sandbox ${id} is already paused`)
      }
      await this.pauseNow(record)
      this.#log.info({ sandboxId: id }, 'sandbox paused')
    })
  }

  /** @throws SandboxNotFoundError (404) */
  kill(id: string): Promise<void> {
    return this.#mutex.run(id, async () => {
      this.#live.require(id)
      await this.killNow(id)
    })
  }

  /**
   * Sets the lifetime anew from now (it may shorten it).
   * @throws SandboxNotFoundError (404), FailedPreconditionError (409) for a paused sandbox
   */
  setTimeout(id: string, timeoutS: number): Promise<void> {
    return this.#mutex.run(id, () => {
      const { record } = this.#live.require(id)
      if (record.state === 'paused') {
        throw new FailedPreconditionError(
          `sandbox ${id} is paused; connect to it to resume it with a timeout`,
        )
      }
      const until = Date.now() + this.#timeouts.lifetimeMs(timeoutS)
      this.#live.update(id, { endAt: until })
      this.#timeouts.schedule(id, until)
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
      await this.#live.require(id).sandbox.setNetwork(network.egress)
      this.#live.update(id, {
        network: network.record,
        allowInternetAccess: network.allowInternetAccess,
      })
      this.#log.info({ sandboxId: id }, 'sandbox network rules replaced')
    })
  }

  /** Pauses a running sandbox; the caller holds its lock. Its lifetime stops with it. */
  async pauseNow(record: SandboxRecord): Promise<void> {
    await this.#live.require(record.id).sandbox.pause()
    this.#timeouts.cancel(record.id)
    this.#live.update(record.id, { state: 'paused' })
  }

  /** Kills a sandbox: gone from the table and the store first, then destroyed. */
  async killNow(id: string): Promise<void> {
    const live = this.#live.remove(id, 'killed')
    await live?.sandbox.destroy({ reason: 'killed' })
  }
}
