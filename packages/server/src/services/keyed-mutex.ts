/** Runs async operations one at a time per key (per sandbox), in arrival order. */

export class KeyedMutex {
  readonly #tails = new Map<string, Promise<unknown>>()

  run<T>(key: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve()
    const result = previous.then(operation, operation)
    const tail = result.catch(() => undefined)
    this.#tails.set(key, tail)
    // Forget the key once nothing is queued behind this operation.
    void tail.then(() => {
      if (this.#tails.get(key) === tail) {
        this.#tails.delete(key)
      }
    })
    return result
  }
}
