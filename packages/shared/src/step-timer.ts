/** Times the steps of one operation, each from the end of the one before (create timings, run timings). */
export class StepTimer {
  readonly startedAt: number
  /** Milliseconds per step, rounded to `decimals`. */
  readonly timings: Record<string, number> = {}
  readonly #scale: number
  #mark: number

  constructor({ startedAt = performance.now(), decimals = 1 } = {}) {
    this.startedAt = startedAt
    this.#mark = startedAt
    this.#scale = 10 ** decimals
  }

  /** Ends the step `name` now; the next one starts here. */
  step(name: string): void {
    const now = performance.now()
    this.record(name, now - this.#mark)
    this.#mark = now
  }

  /** Records a span measured elsewhere (time spent in a queue before the timer started). */
  record(name: string, ms: number): void {
    this.timings[name] = Math.round(ms * this.#scale) / this.#scale
  }

  /** Milliseconds since the start, whole. */
  elapsedMs(): number {
    return Math.round(performance.now() - this.startedAt)
  }
}
