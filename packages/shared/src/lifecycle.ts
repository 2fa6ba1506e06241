/** Ordered teardown of OS resources: whatever is acquired is pushed, and undone in reverse. */

export type CleanupStep = () => void | Promise<void>

/**
 * A stack of undo steps. `dispose()` runs them newest first, keeps going past failures and
 * throws one AggregateError naming every failure. Used by every create path so that a failed
 * step undoes the ones before it.
 */
export class CleanupStack implements AsyncDisposable {
  readonly #steps: { label: string; step: CleanupStep }[] = []
  #disposed = false

  /** Registers an undo step; `label` names it in errors. */
  defer(label: string, step: CleanupStep): void {
    this.#steps.push({ label, step })
  }

  /** Registers a resource that disposes itself. */
  use<T extends AsyncDisposable | Disposable>(label: string, resource: T): T {
    this.defer(label, async () => {
      if (Symbol.asyncDispose in resource) {
        await resource[Symbol.asyncDispose]()
      } else {
        resource[Symbol.dispose]()
      }
    })
    return resource
  }

  /** Forgets every step without running it: the resources now belong to someone else. */
  release(): void {
    this.#steps.length = 0
  }

  get size(): number {
    return this.#steps.length
  }

  async dispose(): Promise<void> {
    this.#disposed = true
    const failures: Error[] = []
    while (this.#steps.length > 0) {
      const { label, step } = this.#steps.pop() as { label: string; step: CleanupStep }
      try {
        await step()
      } catch (err) {
        failures.push(new Error(`cleanup "${label}" failed: ${String(err)}`, { cause: err }))
      }
    }
    if (failures.length > 0) {
      throw new AggregateError(failures, `${failures.length} cleanup step(s) failed`)
    }
  }

  get disposed(): boolean {
    return this.#disposed
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose()
  }
}
