/**
 * The wrapper around every sandbox (OpenLambda's safeSandbox): calls are serialised; any failed
 * call destroys the sandbox; every call on a destroyed sandbox throws SandboxDeadError and does
 * no harm; listeners hear of every transition.
 */
import {
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  SandboxDeadError,
  errorMessage,
  type Logger,
} from '@sandcell/shared'
import type { EgressPolicy } from '@sandcell/network'
import type { AgentConnection } from '@sandcell/envd-client'
import type {
  DestroyReason,
  Sandbox,
  SandboxLimits,
  SandboxSnapshot,
  SandboxState,
  SandboxStats,
} from './driver.js'
import type { SandboxEvents } from './sandbox-events.js'

export interface GuardOptions {
  log: Logger
  events: SandboxEvents
}

class GuardedSandbox implements Sandbox {
  readonly #inner: Sandbox
  readonly #log: Logger
  readonly #events: SandboxEvents
  #queue: Promise<unknown> = Promise.resolve()
  #dead: DestroyReason | undefined
  #destroying: Promise<void> | undefined
  /** A shut-down under way: the end it brings about is no surprise. */
  #shuttingDown = false
  readonly ended: Promise<DestroyReason>
  #resolveEnded!: (reason: DestroyReason) => void

  constructor(inner: Sandbox, options: GuardOptions) {
    this.#inner = inner
    this.#log = options.log.child({ sandboxId: inner.id })
    this.#events = options.events
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve
    })
    // The sandbox can end on its own (agent crash, killed from outside): clean up then.
    inner.ended.then(
      (reason) => {
        if (this.#dead === undefined && !this.#shuttingDown) {
          this.#log.warn({ reason: reason.reason }, 'sandbox ended unexpectedly')
          void this.destroy(reason)
        }
      },
      (err: unknown) => this.#log.error({ err }, 'sandbox end watcher failed'),
    )
  }

  get id() {
    return this.#inner.id
  }

  get info() {
    return this.#inner.info
  }

  get state(): SandboxState {
    return this.#dead === undefined ? this.#inner.state : 'destroyed'
  }

  #assertAlive(): void {
    if (this.#dead !== undefined) {
      throw new SandboxDeadError(this.id, this.#dead.reason, { cause: this.#dead.cause })
    }
  }

  /** Runs `run` after every earlier call. */
  #enqueue<T>(run: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(run, run)
    this.#queue = result.catch(() => undefined)
    return result
  }

  /** Runs `call` after every earlier call; a failure destroys the sandbox and is rethrown. */
  #serialise<T>(name: string, call: () => Promise<T>): Promise<T> {
    return this.#enqueue(async (): Promise<T> => {
      this.#assertAlive()
      try {
        return await call()
      } catch (err) {
        // The caller's mistake, or a resource outside the sandbox ran out (host disk during a
        // snapshot): the sandbox itself is intact and stays.
        if (
          err instanceof InvalidArgumentError ||
          err instanceof FailedPreconditionError ||
          err instanceof ResourceExhaustedError
        ) {
          throw err
        }
        this.#log.error({ err, call: name }, 'sandbox call failed; destroying it')
        await this.#destroyNow({ reason: `${name} failed: ${errorMessage(err)}`, cause: err })
        throw err
      }
    })
  }

  connect(): AgentConnection {
    this.#assertAlive()
    if (this.#inner.state === 'paused') {
      throw new FailedPreconditionError(`sandbox ${this.id} is paused; resume it first`)
    }
    return this.#inner.connect()
  }

  pause(options?: { signal?: AbortSignal }): Promise<void> {
    return this.#serialise('pause', async () => {
      if (this.#inner.state === 'paused') {
        throw new FailedPreconditionError(`sandbox ${this.id} is already paused`)
      }
      await this.#inner.pause(options)
      this.#events.emit({ type: 'paused', sandbox: this })
    })
  }

  resume(options?: { signal?: AbortSignal }): Promise<void> {
    return this.#serialise('resume', async () => {
      if (this.#inner.state !== 'paused') {
        return
      }
      await this.#inner.resume(options)
      this.#events.emit({ type: 'resumed', sandbox: this })
    })
  }

  setLimits(limits: SandboxLimits, options?: { signal?: AbortSignal }): Promise<void> {
    return this.#serialise('setLimits', async () => {
      await this.#inner.setLimits(limits, options)
      this.#events.emit({ type: 'limits-changed', sandbox: this })
    })
  }

  setLabels(labels: Record<string, string>): Promise<void> {
    return this.#serialise('setLabels', () => this.#inner.setLabels(labels))
  }

  setNetwork(egress: EgressPolicy, options?: { signal?: AbortSignal }): Promise<void> {
    return this.#serialise('setNetwork', () => this.#inner.setNetwork(egress, options))
  }

  stats(): Promise<SandboxStats> {
    return this.#serialise('stats', () => this.#inner.stats())
  }

  snapshot(options: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    return this.#serialise('snapshot', () => this.#inner.snapshot(options))
  }

  /**
   * Keeps the disk, then destroys the sandbox whatever the outcome. A destroy that leaves
   * something behind is logged and left to the driver's sweep: the disk is saved by then.
   */
  shutDown(options: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot> {
    return this.#enqueue(async () => {
      this.#assertAlive()
      this.#shuttingDown = true
      try {
        const snapshot = await this.#inner.shutDown(options)
        await this.#destroyNow({ reason: 'shut down, its disk kept' }).catch(() => undefined)
        return snapshot
      } catch (err) {
        const reason = `shutDown failed: ${errorMessage(err)}`
        await this.#destroyNow({ reason, cause: err }).catch(() => undefined)
        throw err
      } finally {
        this.#shuttingDown = false
      }
    })
  }

  /** Destroys without waiting for queued calls: a stuck call must never block a kill. */
  destroy(reason: DestroyReason = { reason: 'destroyed' }): Promise<void> {
    return this.#destroyNow(reason)
  }

  #destroyNow(reason: DestroyReason): Promise<void> {
    if (this.#destroying !== undefined) {
      return this.#destroying
    }
    this.#dead = reason
    this.#destroying = (async () => {
      try {
        await this.#inner.destroy(reason)
      } catch (err) {
        // Cleanup continues in the driver's own sweep (adopt); the sandbox stays dead to callers.
        this.#log.error({ err }, 'destroy left something behind')
        throw err
      } finally {
        this.#log.info({ reason: reason.reason }, 'sandbox destroyed')
        this.#events.emit({ type: 'destroyed', sandbox: this, reason })
        this.#resolveEnded(reason)
      }
    })()
    return this.#destroying
  }
}

/** Wraps a driver's sandbox; every sandbox handed out by a driver goes through this. */
export function guardSandbox(inner: Sandbox, options: GuardOptions): Sandbox {
  return new GuardedSandbox(inner, options)
}
