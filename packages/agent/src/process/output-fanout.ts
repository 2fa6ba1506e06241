/**
 * Fans a process's events out to every subscriber (the Start stream and any Connect streams),
 * with bounded memory.
 *
 * Each subscriber has its own queue, measured in bytes. When any queue passes the high-water mark
 * the source is paused (the child then blocks on a full pipe, like envd's back-pressure) and
 * resumed once every queue is under the low-water mark. A subscriber that holds the source paused
 * without reading anything for `stallMs`, or whose queue passes the hard limit, is dropped: its
 * stream ends with RESOURCE_EXHAUSTED and the others carry on. Events published while nobody
 * listens are discarded, like envd.
 */
import { BugError, ResourceExhaustedError, type Logger } from '@sandcell/shared'

/** Options for {@link OutputFanout}. */
export interface OutputFanoutOptions {
  /** Pause the source when a subscriber holds more than this. @default 1 MiB */
  highWaterBytes?: number
  /** Resume when every subscriber holds at most this. @default 256 KiB */
  lowWaterBytes?: number
  /** Drop a subscriber past this regardless of time (the source may overshoot a pause). @default 16 MiB */
  hardLimitBytes?: number
  /** How long a subscriber may block the source without reading before it is dropped. */
  stallMs: number
  pause(): void
  resume(): void
  log: Logger
}

interface Queued<E> {
  event: E
  bytes: number
}

/** One subscriber's view: an async iterable of events from its subscription on. */
export interface Subscription<E> extends AsyncIterable<E> {
  /** Stops receiving; the iterator finishes. */
  close(): void
}

class Subscriber<E> implements Subscription<E> {
  readonly items: Queued<E>[] = []
  queuedBytes = 0
  /** Since when this queue has held a paused source up without a read; undefined if not. */
  blockedSince: number | undefined
  #waiter: { resolve: (r: IteratorResult<E>) => void; reject: (e: Error) => void } | undefined
  #done = false
  #error: Error | undefined
  #iterated = false

  constructor(private readonly onChange: (subscriber: Subscriber<E>) => void) {}

  get done(): boolean {
    return this.#done
  }

  push(item: Queued<E>): void {
    if (this.#done) {
      return
    }
    if (this.#waiter !== undefined) {
      const waiter = this.#waiter
      this.#waiter = undefined
      waiter.resolve({ value: item.event, done: false })
      return
    }
    this.items.push(item)
    this.queuedBytes += item.bytes
  }

  finish(error?: Error): void {
    if (this.#done) {
      return
    }
    this.#done = true
    this.#error = error
    if (error !== undefined) {
      this.items.length = 0
      this.queuedBytes = 0
    }
    if (this.#waiter !== undefined && this.items.length === 0) {
      const waiter = this.#waiter
      this.#waiter = undefined
      if (error === undefined) {
        waiter.resolve({ value: undefined, done: true })
      } else {
        waiter.reject(error)
      }
    }
  }

  close(): void {
    this.items.length = 0
    this.queuedBytes = 0
    this.finish()
    this.onChange(this)
  }

  [Symbol.asyncIterator](): AsyncIterator<E> {
    if (this.#iterated) {
      throw new BugError('a subscription has exactly one consumer')
    }
    this.#iterated = true
    return {
      next: () => {
        const item = this.items.shift()
        if (item !== undefined) {
          this.queuedBytes -= item.bytes
          // Any read is progress: a slow reader is throttled, only a stuck one is dropped.
          this.blockedSince = undefined
          this.onChange(this)
          return Promise.resolve({ value: item.event, done: false })
        }
        if (this.#done) {
          return this.#error === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.#error)
        }
        return new Promise((resolve, reject) => {
          this.#waiter = { resolve, reject }
        })
      },
      return: () => {
        this.close()
        return Promise.resolve({ value: undefined, done: true })
      },
    }
  }
}

/** Delivers every published event to every current subscriber; see the file comment. */
export class OutputFanout<E> {
  readonly #subscribers = new Set<Subscriber<E>>()
  readonly #options: Required<Omit<OutputFanoutOptions, 'pause' | 'resume' | 'log'>> &
    Pick<OutputFanoutOptions, 'pause' | 'resume' | 'log'>
  #paused = false
  #stallTimer: NodeJS.Timeout | undefined
  #final: E | undefined
  #ended = false

  constructor(options: OutputFanoutOptions) {
    this.#options = {
      highWaterBytes: 1024 * 1024,
      lowWaterBytes: 256 * 1024,
      hardLimitBytes: 16 * 1024 * 1024,
      ...options,
    }
  }

  /** Subscribers that currently receive events. */
  get subscriberCount(): number {
    return this.#subscribers.size
  }

  /** A new subscription receiving events published from now on (just the final one after end). */
  subscribe(): Subscription<E> {
    const subscriber = new Subscriber<E>((s) => this.#onSubscriberChange(s))
    if (this.#ended) {
      subscriber.push({ event: this.#final as E, bytes: 0 })
      subscriber.finish()
      return subscriber
    }
    this.#subscribers.add(subscriber)
    return subscriber
  }

  /** Sends an event of `bytes` payload bytes to every subscriber. */
  publish(event: E, bytes: number): void {
    if (this.#ended) {
      return
    }
    for (const subscriber of this.#subscribers) {
      subscriber.push({ event, bytes })
      if (subscriber.queuedBytes > this.#options.hardLimitBytes) {
        this.#drop(subscriber, `it fell more than ${this.#options.hardLimitBytes} bytes behind`)
      }
    }
    this.#update()
  }

  /** Sends the last event to everyone, then ends every subscription after it. */
  end(final: E): void {
    if (this.#ended) {
      return
    }
    this.#ended = true
    this.#final = final
    clearInterval(this.#stallTimer)
    for (const subscriber of this.#subscribers) {
      subscriber.push({ event: final, bytes: 0 })
      subscriber.finish()
    }
    this.#subscribers.clear()
    if (this.#paused) {
      this.#paused = false
      this.#options.resume()
    }
  }

  #onSubscriberChange(subscriber: Subscriber<E>): void {
    if (subscriber.done && subscriber.items.length === 0) {
      this.#subscribers.delete(subscriber)
    }
    this.#update()
  }

  #drop(subscriber: Subscriber<E>, why: string): void {
    this.#subscribers.delete(subscriber)
    this.#options.log.warn({ why }, 'dropped a slow output subscriber')
    subscriber.finish(
      new ResourceExhaustedError(
        `output stream dropped because ${why}; the process keeps running (reconnect to follow it)`,
      ),
    )
  }

  /** Pauses or resumes the source after any queue changed. */
  #update(): void {
    if (this.#ended) {
      return
    }
    const { highWaterBytes, lowWaterBytes } = this.#options
    let over = false
    let allLow = true
    for (const subscriber of this.#subscribers) {
      over ||= subscriber.queuedBytes > highWaterBytes
      allLow &&= subscriber.queuedBytes <= lowWaterBytes
    }
    if (!this.#paused && over) {
      this.#paused = true
      this.#options.pause()
      this.#startStallTimer()
    } else if (this.#paused && allLow) {
      this.#paused = false
      clearInterval(this.#stallTimer)
      this.#stallTimer = undefined
      for (const subscriber of this.#subscribers) {
        subscriber.blockedSince = undefined
      }
      this.#options.resume()
    }
    if (this.#paused) {
      // While paused, whoever is above the low-water mark holds everyone up.
      const now = Date.now()
      for (const subscriber of this.#subscribers) {
        if (subscriber.queuedBytes > lowWaterBytes) {
          subscriber.blockedSince ??= now
        }
      }
    }
  }

  #startStallTimer(): void {
    if (this.#stallTimer !== undefined) {
      return
    }
    const { stallMs, lowWaterBytes } = this.#options
    this.#stallTimer = setInterval(
      () => {
        const now = Date.now()
        for (const subscriber of this.#subscribers) {
          const since = subscriber.blockedSince
          if (
            subscriber.queuedBytes > lowWaterBytes &&
            since !== undefined &&
            now - since >= stallMs
          ) {
            this.#drop(subscriber, `it read nothing for ${stallMs} ms while the process had output`)
          }
        }
        this.#update()
      },
      Math.max(10, Math.min(1000, Math.floor(stallMs / 4))),
    )
  }
}
