/**
 * One-shot code execution on sandboxes: each run gets a fresh sandbox no other run touched
 * (from a per-template warm pool sized from recent demand), its files written through the agent,
 * an optional compile stage and a run stage with their own timeouts and memory limits, output
 * capped and reported, and the sandbox destroyed after, never reused. Runs are bounded in
 * number; excess ones queue with a deadline, then fail with 429 and a Retry-After estimate.
 * The server's Piston and Lambdo routes and the CLI's `run --local` share it.
 */
import type { Driver, Sandbox, SandboxLimits } from '@sandcell/runtime'
import type { Logger } from '@sandcell/shared'
import type { LanguageCatalog, ResolvedLanguage } from './language-catalog.js'
import type { RunSettings } from './run-config.js'
import { runJob } from './run-job.js'
import { RunPools } from './run-pools.js'
import { RunQueue } from './run-queue.js'
import type { RunRequest, RunResult } from './run-request.js'
import { stageLimits, type RunSandboxSizing, type StageLimits } from './stage-limits.js'
import type { StageName } from './stage-result.js'

/** Prometheus hooks the server passes in. */
export interface RunMetrics {
  /** A run answered: its result, or undefined when it failed with an error. */
  finished(language: string, result: RunResult | undefined, seconds: number): void
  rejected(): void
  waiting(count: number): void
}

export interface RunServiceOptions {
  driver: Driver
  catalog: LanguageCatalog
  log: Logger
  /** CPU and disk of run sandboxes; memory and pids are set per stage. */
  limits: SandboxLimits
  /** Labels on every run sandbox (the owner, so leftovers of a crash are found). */
  labels: Record<string, string>
  settings: RunSettings
  metrics?: RunMetrics
}

export class RunService {
  readonly catalog: LanguageCatalog
  readonly settings: RunSettings
  readonly #options: RunServiceOptions
  readonly #log: Logger
  readonly #sizing: RunSandboxSizing
  readonly #pools: RunPools
  readonly #queue: RunQueue

  constructor(options: RunServiceOptions) {
    this.#options = options
    this.catalog = options.catalog
    this.settings = options.settings
    this.#log = options.log.child({ component: 'server.runs' })
    this.#sizing = {
      cpus: options.limits.cpus,
      diskMiB: options.limits.diskMiB,
      memoryOverheadMiB: options.settings.memoryOverheadMiB,
    }
    this.#queue = new RunQueue({
      maxConcurrent: options.settings.maxConcurrent,
      maxQueued: options.settings.maxQueued,
      queueTimeoutMs: options.settings.queueTimeoutMs,
      metrics: options.metrics,
    })
    this.#pools = new RunPools({
      driver: options.driver,
      log: options.log,
      sizing: this.#sizing,
      poolMin: options.settings.poolMin,
      poolMax: options.settings.poolMax,
    })
  }

  /**
   * Probes the languages' templates and keeps warm pools for the templates in use (at least
   * `poolMin` each), resized from demand. Without it (the CLI) every run creates its sandbox.
   */
  start(): void {
    this.catalog.warmUp()
    this.#pools.start()
    void this.catalog
      .available()
      .then((languages) => this.#pools.track(new Set(languages.map((l) => l.template))))
      .catch((err: unknown) => this.#log.error({ err }, 'cannot size the run pools'))
  }

  /** Ready sandboxes per template in the run pools. */
  poolReady(): Record<string, number> {
    return this.#pools.readyCounts()
  }

  /** Runs waiting for a slot, and running. */
  load(): { running: number; waiting: number } {
    return this.#queue.load()
  }

  /** Seconds a client should wait before trying again, from the queue and the mean run time. */
  retryAfterS(): number {
    return this.#queue.retryAfterS()
  }

  /** A stage's limits: the given ones, the language's for the rest. */
  stageLimits(
    language: ResolvedLanguage,
    stage: StageName,
    given?: Partial<StageLimits>,
  ): StageLimits {
    return stageLimits(language, stage, given)
  }

  /**
   * Runs the request's files in a fresh sandbox. Resolves when the last stage ended (the
   * sandbox is destroyed after, in the background, still holding its slot).
   * @throws ResourceExhaustedError (429, `details.retryAfterS`) when no slot frees in time;
   *   the signal's reason when aborted; SandcellErrors of the runtime (sandbox, agent)
   */
  execute(request: RunRequest): Promise<RunResult> {
    const queuedAt = performance.now()
    const { language } = request
    this.#pools.arrived(language.template, queuedAt)
    const finished = (result: RunResult | undefined): void =>
      this.#options.metrics?.finished(
        language.config.name,
        result,
        (performance.now() - queuedAt) / 1000,
      )
    let sandbox: Sandbox | undefined
    let heldAt = queuedAt
    return this.#queue.run({
      signal: request.signal,
      work: async () => {
        heldAt = performance.now()
        try {
          const result = await runJob(request, queuedAt, {
            pools: this.#pools,
            sizing: this.#sizing,
            labels: this.#options.labels,
            outputMaxChars: this.settings.outputMaxChars,
            log: this.#log,
            onSandbox: (acquired) => (sandbox = acquired),
          })
          finished(result)
          return result
        } catch (err) {
          finished(undefined)
          throw err
        }
      },
      after: async () => {
        request.control?.attach(undefined)
        if (sandbox !== undefined) {
          await sandbox.destroy({ reason: 'run finished' }).catch((err: unknown) => {
            this.#log.error({ err, sandboxId: sandbox?.id }, 'cannot destroy a run sandbox')
          })
        }
        this.#pools.finished(language.template, performance.now() - heldAt)
      },
    })
  }

  /** Stops resizing, waits for runs in flight, and destroys the idle pooled sandboxes. */
  async close(): Promise<void> {
    this.#pools.stop()
    await this.#queue.drain()
    await this.catalog.close()
    await this.#pools.close()
  }
}
