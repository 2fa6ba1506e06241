/**
 * Where run sandboxes come from: a warm pool per template, resized every few seconds to the
 * demand each template's recent runs show (at least `poolMin`, at most `poolMax` ready). Without
 * `start()` (the CLI) no sandbox is kept ready and every run creates its own.
 */
import { WarmPool, type Driver, type Sandbox, type SandboxLimits } from '@sandcell/runtime'
import type { Logger } from '@sandcell/shared'
import { DemandEstimator } from './demand.js'
import { runSandboxLimits, type RunSandboxSizing } from './stage-limits.js'

/** How often pool sizes follow demand, ms. */
const resizeIntervalMs = 2000

export interface RunPoolsOptions {
  driver: Driver
  log: Logger
  sizing: RunSandboxSizing
  poolMin: number
  poolMax: number
}

/** What a run asks of its sandbox. */
export interface RunSandboxSpec {
  template: string
  limits: SandboxLimits
  labels: Record<string, string>
  network: boolean
}

export class RunPools {
  readonly #options: RunPoolsOptions
  readonly #log: Logger
  readonly #pool: WarmPool
  readonly #demand = new Map<string, DemandEstimator>()
  readonly #sizes = new Map<string, number>()
  /** Resizes under way: close() waits for the sandboxes a shrink destroys. */
  readonly #resizes = new Set<Promise<void>>()
  #resizer: NodeJS.Timeout | undefined
  #stopped = false

  constructor(options: RunPoolsOptions) {
    this.#options = options
    this.#log = options.log.child({ component: 'server.runs' })
    this.#pool = new WarmPool({
      driver: options.driver,
      log: options.log,
      sizes: {},
      limits: runSandboxLimits(options.sizing, 128, 64),
      // Runs are offline unless their language says otherwise: pooled ones have loopback only.
      network: false,
    })
  }

  /** Starts the pools and their resizing. */
  start(): void {
    this.#pool.start()
    this.#resizer = setInterval(() => this.#resizeAll(), resizeIntervalMs)
    this.#resizer.unref()
  }

  /** Keeps a pool for each of `templates` (at least `poolMin` ready) before any run asks. */
  track(templates: Iterable<string>): void {
    for (const template of templates) {
      this.#estimator(template)
    }
    this.#resizeAll()
  }

  /** A run for `template` arrived at `nowMs` (its pool may grow at once). */
  arrived(template: string, nowMs: number): void {
    this.#estimator(template).arrived(nowMs)
    this.#resizeAll()
  }

  /**
   * A sandbox no run touched: a ready one from the template's pool when it fits `spec`, else a
   * new one (its creation time teaches the pool's demand estimate).
   */
  async acquire(
    spec: RunSandboxSpec,
    options: { signal?: AbortSignal | undefined },
  ): Promise<{ sandbox: Sandbox; pooled: boolean }> {
    const createdAt = performance.now()
    const acquired = await this.#pool.acquire(
      spec,
      options.signal === undefined ? {} : { signal: options.signal },
    )
    if (!acquired.pooled) {
      this.#estimator(spec.template).created(performance.now() - createdAt)
    }
    return acquired
  }

  /** A run of `template` gave its sandbox back (destroyed) after holding it `holdMs`. */
  finished(template: string, holdMs: number): void {
    this.#estimator(template).finished(holdMs)
  }

  /** Ready sandboxes per template. */
  readyCounts(): Record<string, number> {
    return this.#pool.readyCounts()
  }

  #estimator(template: string): DemandEstimator {
    let estimator = this.#demand.get(template)
    if (estimator === undefined) {
      estimator = new DemandEstimator({
        min: this.#options.poolMin,
        max: this.#options.poolMax,
        windowMs: 30_000,
        createMs: 200,
      })
      this.#demand.set(template, estimator)
    }
    return estimator
  }

  #resizeAll(): void {
    if (this.#stopped || this.#resizer === undefined) {
      return
    }
    const now = performance.now()
    for (const [template, estimator] of this.#demand) {
      const size = estimator.target(now)
      if (this.#sizes.get(template) !== size) {
        this.#sizes.set(template, size)
        this.#log.debug({ template, size }, 'run pool resized')
        const resize = this.#pool
          .resize(template, size)
          .catch((err: unknown) => this.#log.warn({ err, template }, 'cannot resize a run pool'))
        this.#resizes.add(resize)
        void resize.finally(() => this.#resizes.delete(resize))
      }
    }
  }

  /** Stops following demand (runs may still acquire). */
  stop(): void {
    this.#stopped = true
    clearInterval(this.#resizer)
  }

  /** Stops, waits for resizes under way, and destroys the ready sandboxes. */
  async close(): Promise<void> {
    this.stop()
    await Promise.allSettled([...this.#resizes])
    await this.#pool.close()
  }
}
