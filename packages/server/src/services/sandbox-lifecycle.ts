/**
 * A sandbox's life as the API drives it: create (a warm pool hand-over or a cold create, from a
 * template or a snapshot), connect (resume or extend), pause (in memory, or keeping the
 * filesystem only), kill, new lifetimes and network rules. Each step holds the sandbox's lock
 * and goes through the live table.
 */
import { mkdirSync, rmSync } from 'node:fs'
import { dirname } from 'node:path'
import type { DriverKind, Sandbox, WarmPool } from '@sandcell/runtime'
import type { EgressPolicy } from '@sandcell/network'
import { BugError, FailedPreconditionError, newSecret, type Logger } from '@sandcell/shared'
import type { ServerConfig } from '../config/schema.js'
import type { ServerMetrics } from '../metrics.js'
import type { OnTimeout, SandboxNetworkRecord, SandboxRecord } from '../store/sqlite-store.js'
import type { KeyedMutex } from './keyed-mutex.js'
import type { LiveSandboxes } from './live-sandboxes.js'
import { pausedDiskDir } from './paused-disks.js'
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
  /** Whether a pause at the timeout keeps memory; false keeps the filesystem only. */
  autoPauseMemory: boolean
  autoResume: boolean
  network: SandboxNetworkInput
  /**
   * The access token the agent of a memory snapshot holds (a fork's original's), when the
   * original may be gone by then.
   */
  snapshotAccessToken?: string | undefined
}

/** How a sandbox pauses, or how a paused one comes back (E2B's `memory`). */
export interface PauseKind {
  /**
   * True: processes stay in memory and go on where they were. False: the filesystem only;
   * every process ends, and the sandbox boots again on its files.
   */
  memory: boolean
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
    // A memory snapshot restores an agent that holds its original's token: rotating it takes it.
    const heldToken =
      source.fromSnapshot?.memory === true
        ? (input.snapshotAccessToken ??
          (source.snapshotOf === undefined
            ? undefined
            : this.#live.get(source.snapshotOf)?.record.envdAccessToken))
        : undefined
    await initAgent(sandbox, envVars, envdAccessToken, heldToken)
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
      autoPauseMemory: input.autoPauseMemory,
      autoResume: input.autoResume,
      filesystemPause: null,
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
   * Connects to a sandbox: a paused one is resumed with a fresh lifetime of `timeoutS` (booted
   * again on its files when it kept them only, or when `memory` is false); a running one only
   * has its lifetime extended (never shortened).
   * @returns the record and whether it was resumed (the API answers 201 then, 200 otherwise)
   * @throws SandboxNotFoundError (404), InvalidArgumentError (400) for a bad timeout
   */
  connect(
    id: string,
    timeoutS: number | undefined,
    kind: PauseKind = { memory: true },
  ): Promise<{ record: SandboxRecord; resumed: boolean }> {
    return this.#mutex.run(id, async () => {
      const live = this.#live.require(id)
      const until = Date.now() + this.#timeouts.lifetimeMs(timeoutS)
      if (live.record.state === 'paused') {
        if (live.record.filesystemPause === null && live.sandbox !== undefined && kind.memory) {
          await live.sandbox.resume()
          this.#live.update(id, { state: 'running', endAt: until })
        } else {
          if (live.record.filesystemPause === null) {
            // E2B's onResume 'reboot': the memory is dropped, the files kept.
            await this.#pauseOnDisk(live.record)
          }
          await this.#bootFromDisk(id, until)
        }
        this.#timeouts.schedule(id, until)
        this.#log.info({ sandboxId: id, memory: kind.memory }, 'sandbox resumed')
        return { record: this.#live.require(id).record, resumed: true }
      }
      if (until > live.record.endAt) {
        this.#live.update(id, { endAt: until })
        this.#timeouts.schedule(id, until)
      }
      return { record: live.record, resumed: false }
    })
  }

  /** @throws SandboxNotFoundError (404), FailedPreconditionError (409) when already paused */
  pause(id: string, kind: PauseKind = { memory: true }): Promise<void> {
    return this.#mutex.run(id, async () => {
      const { record } = this.#live.require(id)
      if (record.state === 'paused') {
        throw new FailedPreconditionError(`sandbox ${id} is already paused`)
      }
      await this.pauseNow(record, kind)
      this.#log.info({ sandboxId: id, memory: kind.memory }, 'sandbox paused')
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
      const { sandbox, record } = this.#live.require(id)
      const paused = record.filesystemPause
      if (sandbox === undefined && paused !== null) {
        if (paused.egress === null) {
          throw new FailedPreconditionError(
            `sandbox ${id} has no network of its own (loopback only): its rules cannot change`,
          )
        }
        // Nothing runs: the rules wait for the resume, which boots with them.
        this.#live.update(id, { filesystemPause: { ...paused, egress: network.egress } })
      } else {
        await this.#runtime(id).setNetwork(network.egress)
      }
      this.#live.update(id, {
        network: network.record,
        allowInternetAccess: network.allowInternetAccess,
      })
      this.#log.info({ sandboxId: id }, 'sandbox network rules replaced')
    })
  }

  /** Pauses a running sandbox as `kind` says; the caller holds its lock. Its lifetime stops. */
  async pauseNow(record: SandboxRecord, kind: PauseKind): Promise<void> {
    if (!kind.memory) {
      await this.#pauseOnDisk(record)
      return
    }
    await this.#runtime(record.id).pause()
    this.#timeouts.cancel(record.id)
    this.#live.update(record.id, { state: 'paused' })
  }

  /** Kills a sandbox: gone from the table and the store first, then destroyed with its disk. */
  async killNow(id: string): Promise<void> {
    const live = this.#live.remove(id, 'killed')
    await live?.sandbox?.destroy({ reason: 'killed' })
    rmSync(pausedDiskDir(this.#config.dataDir, id), { recursive: true, force: true })
  }

  /** The runtime handle of a sandbox that has one (it runs, or is paused in memory). */
  #runtime(id: string): Sandbox {
    const { sandbox } = this.#live.require(id)
    if (sandbox === undefined) {
      throw new FailedPreconditionError(
        `sandbox ${id} is paused keeping its filesystem only; connect to it to boot it again`,
      )
    }
    return sandbox
  }

  /**
   * A filesystem-only pause: the sandbox shuts down, its disk kept under the data dir. The
   * record says paused before the shut-down, so that its end is no surprise to the table; a
   * shut-down that fails has ended the sandbox, and its record goes too.
   */
  async #pauseOnDisk(record: SandboxRecord): Promise<void> {
    const { id } = record
    const sandbox = this.#runtime(id)
    const dir = pausedDiskDir(this.#config.dataDir, id)
    mkdirSync(dirname(dir), { recursive: true, mode: 0o700 })
    rmSync(dir, { recursive: true, force: true })
    this.#timeouts.cancel(id)
    this.#live.replaceSandbox(id, undefined, { state: 'paused' })
    try {
      await sandbox.shutDown({ dir })
    } catch (err) {
      this.#live.remove(id, 'its filesystem-only pause failed')
      throw err
    }
    const egress = sandbox.info.network?.egress ?? null
    this.#live.update(id, { filesystemPause: { template: sandbox.info.template, egress } })
  }

  /**
   * Boots a new sandbox with the same id, access token and env vars on the disk a
   * filesystem-only pause kept; the disk's copy is removed once the sandbox runs. A boot that
   * fails leaves the sandbox paused, its disk kept for the next try.
   */
  async #bootFromDisk(id: string, until: number): Promise<void> {
    const { record } = this.#live.require(id)
    const paused = record.filesystemPause
    if (paused === null) {
      throw new BugError(`booted sandbox ${id}, which was not paused on its filesystem`)
    }
    const dir = pausedDiskDir(this.#config.dataDir, id)
    const { sandbox } = await this.#pool.acquire({
      id: record.id,
      template: paused.template,
      driver: record.driver,
      limits: { ...record.limits },
      labels: { ...serverOwnerLabels },
      ...(paused.egress === null ? {} : { egress: paused.egress }),
      fromSnapshot: {
        driver: record.driver,
        template: paused.template,
        diskMiB: record.limits.diskMiB,
        dir,
        memory: false,
      },
    })
    await initAgent(sandbox, record.envVars, record.envdAccessToken)
    this.#live.replaceSandbox(id, sandbox, {
      state: 'running',
      endAt: until,
      filesystemPause: null,
    })
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Hands a new sandbox's agent its env vars and access token; a built template's env, user and
 * workdir stay under the sandbox's own env vars. An agent that refuses ends the sandbox.
 */
async function initAgent(
  sandbox: Sandbox,
  envVars: Record<string, string>,
  accessToken: string,
  currentAccessToken?: string,
): Promise<void> {
  try {
    const defaults = sandbox.info.templateDefaults
    await sandbox.connect().init({
      envVars: { ...defaults?.env, ...envVars },
      accessToken,
      ...(currentAccessToken === undefined ? {} : { currentAccessToken }),
      ...(defaults === undefined ? {} : { defaultUser: defaults.user }),
      ...(defaults?.workdir === undefined ? {} : { defaultWorkdir: defaults.workdir }),
    })
  } catch (err) {
    await sandbox.destroy({ reason: 'the agent refused its init', cause: err })
    throw err
  }
}
