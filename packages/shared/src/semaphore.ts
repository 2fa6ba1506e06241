/** Bounds how many operations run at once; the rest wait in arrival order. */

export class Semaphore {
  readonly #limit: number
  #active = 0
  readonly #waiting: (() => void)[] = []

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(`a semaphore needs a limit of at least 1 (got ${limit})`)
    }
    this.#limit = limit
  }

  get active(): number {
    return this.#active
  }

  get waiting(): number {
    return this.#waiting.length
  }

  /**
   * Runs `operation` once a slot is free. A signal that aborts while waiting rejects with its
   * reason and gives up the place in the queue.
   */
  async run<T>(operation: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.#acquire(signal)
    try {
      return await operation()
    } finally {
      this.#active -= 1
      this.#waiting.shift()?.()
    }
  }

  #acquire(signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted()
    if (this.#active < this.#limit) {
      this.#active += 1
      return Promise.resolve()
    }
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        signal?.removeEventListener('abort', onAbort)
        this.#active += 1
        resolve()
      }
      const onAbort = (): void => {
        const index = this.#waiting.indexOf(grant)
        if (index >= 0) {
          this.#waiting.splice(index, 1)
        }
        reject(signal?.reason as Error)
      }
      this.#waiting.push(grant)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}
