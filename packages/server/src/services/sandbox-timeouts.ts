/**
 * Sandbox lifetimes: one timer per running sandbox that pauses or kills it (its onTimeout) at
 * its stored end time. Armed from the store's end times after a restart, so a lifetime
 * outlives the process that set it.
 */
import { InvalidArgumentError, type Logger } from '@sandcell/shared'
import type { SandboxRecord } from '../store/sqlite-store.js'
import type { KeyedMutex } from './keyed-mutex.js'
import type { LiveSandboxes } from './live-sandboxes.js'

/** Longest delay a Node timer takes; longer timeouts are re-armed when it fires. */
const maxTimerMs = 2 ** 31 - 1

/** What a sandbox's timeout does to it (the lifecycle's steps, run under its lock). */
export interface TimeoutActions {
  pause(record: SandboxRecord): Promise<void>
  kill(id: string): Promise<void>
}

/** Dependencies of {@link SandboxTimeouts}. */
export interface SandboxTimeoutsOptions {
  live: LiveSandboxes
  /** The per-sandbox lock every change takes: an expiry waits for a change under way. */
  mutex: KeyedMutex
  log: Logger
  /** A lifetime when a request names none, in seconds. */
  defaultTimeoutS: number
  /** The longest lifetime a request may ask for, in seconds. */
  maxTimeoutS: number
  actions: TimeoutActions
}

export class SandboxTimeouts {
  readonly #options: SandboxTimeoutsOptions

  constructor(options: SandboxTimeoutsOptions) {
    this.#options = options
  }

  /**
   * The lifetime a request asked for (the default when it asked for none), in ms.
   * @throws InvalidArgumentError (400) outside 1 s to the server's maximum, or not whole seconds
   */
  lifetimeMs(timeoutS: number | undefined): number {
    const { defaultTimeoutS, maxTimeoutS } = this.#options
    const seconds = timeoutS ?? defaultTimeoutS
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > maxTimeoutS) {
      throw new InvalidArgumentError(
        `timeout must be a whole number of seconds between 1 and ${maxTimeoutS} (got ${timeoutS})`,
      )
    }
    return seconds * 1000
  }

  /** Arms the timer that ends the sandbox at `endAt` (Unix ms), replacing the one it had. */
  schedule(id: string, endAt: number): void {
    const live = this.#options.live.get(id)
    if (live === undefined) {
      return
    }
    clearTimeout(live.timer)
    const delay = Math.max(0, Math.min(endAt - Date.now(), maxTimerMs))
    live.timer = setTimeout(() => {
      void this.#expire(id).catch((err: unknown) =>
        this.#options.log.error({ err, sandboxId: id }, 'timeout handling failed'),
      )
    }, delay)
    live.timer.unref()
  }

  /** Disarms a sandbox's timer (it paused: a lifetime runs only while the sandbox does). */
  cancel(id: string): void {
    const live = this.#options.live.get(id)
    if (live !== undefined) {
      clearTimeout(live.timer)
      live.timer = undefined
    }
  }

  /** Disarms every timer (the server stops; the end times stay stored for the next start). */
  close(): void {
    for (const live of this.#options.live.values()) {
      clearTimeout(live.timer)
      live.timer = undefined
    }
  }

  #expire(id: string): Promise<void> {
    const { live, mutex, log, actions } = this.#options
    return mutex.run(id, async () => {
      const record = live.get(id)?.record
      if (record === undefined || record.state !== 'running') {
        return
      }
      if (record.endAt > Date.now()) {
        // A lifetime longer than one timer can wait (maxTimerMs): wait on.
        this.schedule(id, record.endAt)
        return
      }
      if (record.onTimeout === 'pause') {
        log.info({ sandboxId: id }, 'timeout reached: pausing')
        await actions.pause(record)
      } else {
        log.info({ sandboxId: id }, 'timeout reached: killing')
        await actions.kill(id)
      }
    })
  }
}
