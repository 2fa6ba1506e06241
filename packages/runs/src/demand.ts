/**
 * How many ready sandboxes a template's warm pool should hold, from recent demand: an
 * exponentially weighted arrival rate times how long each run holds a sandbox plus how long a
 * new one takes to make (Little's law: the sandboxes in flight), within configured bounds.
 */

export interface DemandOptions {
  /** Ready sandboxes kept even without demand. */
  min: number
  /** Ready sandboxes never exceeded. */
  max: number
  /** Time constant of the rate average, ms: demand older than a few of these is forgotten. */
  windowMs: number
  /** What making one sandbox is assumed to take until measured, ms. */
  createMs: number
}

export class DemandEstimator {
  readonly #options: DemandOptions
  /** Runs per ms, as of #lastAtMs. */
  #rate = 0
  #lastAtMs: number | undefined
  /** Mean time a run holds its sandbox (acquire to destroyed), ms. */
  #holdMs = 0
  #createMs: number

  constructor(options: DemandOptions) {
    this.#options = options
    this.#createMs = options.createMs
  }

  /** Runs per second at `nowMs`, decayed since the last arrival. */
  ratePerSecond(nowMs: number): number {
    if (this.#lastAtMs === undefined) {
      return 0
    }
    return this.#rate * Math.exp(-(nowMs - this.#lastAtMs) / this.#options.windowMs) * 1000
  }

  /** A run arrived at `nowMs`. */
  arrived(nowMs: number): void {
    const decayed = this.ratePerSecond(nowMs) / 1000
    // Each arrival adds 1/window; in a steady stream of λ per ms the sum settles at λ.
    this.#rate = decayed + 1 / this.#options.windowMs
    this.#lastAtMs = nowMs
  }

  /** A run gave its sandbox back after `holdMs` (moving average over the last ~10 runs). */
  finished(holdMs: number): void {
    this.#holdMs = this.#holdMs === 0 ? holdMs : this.#holdMs * 0.9 + holdMs * 0.1
  }

  /** A sandbox was made cold in `createMs`. */
  created(createMs: number): void {
    this.#createMs = this.#createMs * 0.8 + createMs * 0.2
  }

  /** The pool size for `nowMs`: rate × (hold + create time), rounded up, within [min, max]. */
  target(nowMs: number): number {
    const inFlight = (this.ratePerSecond(nowMs) * (this.#holdMs + this.#createMs)) / 1000
    // Below a tenth of a sandbox in flight the demand is noise that has mostly decayed.
    const wanted = inFlight < 0.1 ? 0 : Math.ceil(inFlight)
    return Math.min(this.#options.max, Math.max(this.#options.min, wanted))
  }
}
