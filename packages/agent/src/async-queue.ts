/** A single-consumer async queue with an item limit, and keepalive merging for server streams. */
import { BugError } from '@sandcell/shared'

/** Options for {@link AsyncQueue}. */
export interface AsyncQueueOptions {
  /** Most items held before `push` reports overflow. @default Infinity */
  maxItems?: number
}

/**
 * Items pushed by a producer, pulled once by one `for await`. `end()` finishes after the queued
 * items; `end(error)` makes the consumer throw `error` after them.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  readonly #items: T[] = []
  readonly #maxItems: number
  #waiter: ((result: IteratorResult<T>) => void) | undefined
  #failWaiter: ((error: Error) => void) | undefined
  #ended = false
  #error: Error | undefined
  #iterated = false

  constructor(options: AsyncQueueOptions = {}) {
    this.#maxItems = options.maxItems ?? Number.POSITIVE_INFINITY
  }

  /** Items waiting for the consumer. */
  get size(): number {
    return this.#items.length
  }

  get ended(): boolean {
    return this.#ended
  }

  /**
   * Adds an item. Returns false (and drops it) when the queue has ended or is full; the producer
   * decides what overflow means.
   */
  push(item: T): boolean {
    if (this.#ended) {
      return false
    }
    if (this.#waiter !== undefined) {
      const waiter = this.#waiter
      this.#clearWaiters()
      waiter({ value: item, done: false })
      return true
    }
    if (this.#items.length >= this.#maxItems) {
      return false
    }
    this.#items.push(item)
    return true
  }

  /** No more items; with `error`, the consumer throws it once the queue is drained. */
  end(error?: Error): void {
    if (this.#ended) {
      return
    }
    this.#ended = true
    this.#error = error
    if (this.#waiter !== undefined && this.#items.length === 0) {
      const waiter = this.#waiter
      const failWaiter = this.#failWaiter
      this.#clearWaiters()
      if (error === undefined) {
        waiter({ value: undefined, done: true })
      } else {
        failWaiter?.(error)
      }
    }
  }

  /** Ends now, dropping queued items (the consumer went away or must stop at once). */
  abort(error?: Error): void {
    this.#items.length = 0
    this.end(error)
  }

  #clearWaiters(): void {
    this.#waiter = undefined
    this.#failWaiter = undefined
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.#iterated) {
      throw new BugError('an AsyncQueue has exactly one consumer')
    }
    this.#iterated = true
    return {
      next: () => {
        if (this.#items.length > 0) {
          return Promise.resolve({ value: this.#items.shift() as T, done: false })
        }
        if (this.#ended) {
          return this.#error === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.#error)
        }
        return new Promise<IteratorResult<T>>((resolve, reject) => {
          this.#waiter = resolve
          this.#failWaiter = reject
        })
      },
      return: () => {
        this.abort()
        return Promise.resolve({ value: undefined, done: true })
      },
    }
  }
}

/**
 * Re-yields `source` and inserts `keepalive()` whenever nothing was yielded for `intervalMs`
 * (envd's `Keepalive-Ping-Interval`). Without an interval it is `source` unchanged.
 */
export async function* withKeepalive<T>(
  source: AsyncIterable<T>,
  intervalMs: number | undefined,
  keepalive: () => T,
): AsyncGenerator<T> {
  if (intervalMs === undefined) {
    yield* source
    return
  }
  const iterator = source[Symbol.asyncIterator]()
  let pending: Promise<IteratorResult<T>> | undefined
  try {
    for (;;) {
      pending ??= iterator.next()
      let timer: NodeJS.Timeout | undefined
      const tick = new Promise<'tick'>((resolve) => {
        timer = setTimeout(() => resolve('tick'), intervalMs)
      })
      const result = await Promise.race([pending, tick]).finally(() => clearTimeout(timer))
      if (result === 'tick') {
        yield keepalive()
        continue
      }
      pending = undefined
      if (result.done === true) {
        return
      }
      yield result.value
    }
  } finally {
    // Sources here end at once on return(), even with a next() pending (no generator sources).
    await iterator.return?.()
  }
}

/**
 * The keepalive interval a request asks for with `Keepalive-Ping-Interval: <seconds>`; undefined
 * when absent or not a positive number. Clamped to at least 1 s so a client cannot make the agent
 * spin.
 */
export function keepaliveIntervalMs(header: string | null): number | undefined {
  if (header === null || header.trim() === '') {
    return undefined
  }
  const seconds = Number(header)
  if (!Number.isFinite(seconds) || seconds <= 0) {
    return undefined
  }
  return Math.max(1, seconds) * 1000
}
