/**
 * The bound on runs at once: a run waits for one of `maxConcurrent` slots, at most `maxQueued`
 * runs wait, none longer than `queueTimeoutMs`; a run turned away gets 429 with a Retry-After
 * estimated from the queue and the mean time a run holds its slot.
 */
import { ResourceExhaustedError, Semaphore } from '@sandcell/shared'

export interface RunQueueOptions {
  maxConcurrent: number
  maxQueued: number
  queueTimeoutMs: number
  /** Prometheus hooks: a run turned away; runs waiting now. */
  metrics?: { rejected(): void; waiting(count: number): void } | undefined
}

export interface QueuedRun<T> {
  /** The run; its result (or failure) is the answer as soon as it is there. */
  work: () => Promise<T>
  /** Runs after `work`, still holding the slot (cleanup the next run must wait for); never rejects. */
  after: () => Promise<void>
  /** Aborting while the run waits rejects with the signal's reason. */
  signal?: AbortSignal | undefined
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

export class RunQueue {
  readonly #options: RunQueueOptions
  readonly #slots: Semaphore
  /** Mean time a run holds its slot, ms, for Retry-After. */
  #meanHoldMs = 1000
  readonly #inFlight = new Set<Promise<unknown>>()

  constructor(options: RunQueueOptions) {
    this.#options = options
    this.#slots = new Semaphore(options.maxConcurrent)
  }

  /** Runs holding a slot, and runs waiting for one. */
  load(): { running: number; waiting: number } {
    return { running: this.#slots.active, waiting: this.#slots.waiting }
  }

  /** Seconds a client should wait before trying again, from the queue and the mean hold time. */
  retryAfterS(): number {
    const ahead = this.#slots.waiting + 1
    return Math.max(1, Math.ceil((ahead * this.#meanHoldMs) / this.#options.maxConcurrent / 1000))
  }

  /**
   * Runs `run.work` once a slot is free and answers with its result; `run.after` follows in
   * the background, still holding the slot.
   * @throws ResourceExhaustedError (429, `details.retryAfterS`) when the queue is full or no slot
   *   frees in time; the signal's reason when aborted while waiting; whatever `work` throws
   */
  run<T>(run: QueuedRun<T>): Promise<T> {
    const { metrics } = this.#options
    if (
      this.#slots.active >= this.#options.maxConcurrent &&
      this.#slots.waiting >= this.#options.maxQueued
    ) {
      metrics?.rejected()
      return Promise.reject(this.#busy())
    }
    const queueTimeout = AbortSignal.timeout(this.#options.queueTimeoutMs)
    const queueSignal =
      run.signal === undefined ? queueTimeout : AbortSignal.any([run.signal, queueTimeout])
    return new Promise<T>((resolve, reject) => {
      const slot = this.#slots.run(async () => {
        metrics?.waiting(this.#slots.waiting)
        const heldAt = performance.now()
        try {
          resolve(await run.work())
        } catch (err) {
          reject(asError(err))
        } finally {
          await run.after()
          const holdMs = performance.now() - heldAt
          this.#meanHoldMs = this.#meanHoldMs * 0.9 + holdMs * 0.1
        }
      }, queueSignal)
      metrics?.waiting(this.#slots.waiting)
      // The slot's promise rejects only while waiting: work and after do not throw into it.
      const waited = slot.catch((err: unknown) => {
        metrics?.waiting(this.#slots.waiting)
        if (queueTimeout.aborted && run.signal?.aborted !== true) {
          metrics?.rejected()
          reject(this.#busy())
        } else {
          reject(asError(err))
        }
      })
      this.#inFlight.add(waited)
      void waited.finally(() => this.#inFlight.delete(waited))
    })
  }

  #busy(): ResourceExhaustedError {
    const retryAfterS = this.retryAfterS()
    return new ResourceExhaustedError(
      `too many runs at once (${this.#options.maxConcurrent} running, ${this.#slots.waiting} waiting); retry after ${retryAfterS} s`,
      { details: { retryAfterS } },
    )
  }

  /** Waits for every run submitted so far, its `after` included. */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#inFlight])
  }
}
