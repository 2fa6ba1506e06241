/**
 * CPU, memory and disk samples of every running sandbox, taken on an interval and kept in the
 * sandbox's entry (an hour of them at the default 5 s), for E2B's `getMetrics`.
 */
import { errorMessage, type Logger } from '@sandcell/shared'
import type { LiveSandbox, LiveSandboxes } from './live-sandboxes.js'

/** Metric samples kept per sandbox (an hour at the default 5 s interval). */
const maxSamples = 720

export interface MetricSample {
  /** Unix ms. */
  timestampMs: number
  cpuCount: number
  cpuUsedPct: number
  memUsed: number
  memTotal: number
  memCache: number
  diskUsed: number
  diskTotal: number
}

/** A sandbox's CPU counter when it was read, for the usage between two samples. */
export interface CpuReading {
  atMs: number
  cpuUsageUs: number
}

/** Dependencies of {@link SandboxSampler}. */
export interface SandboxSamplerOptions {
  live: LiveSandboxes
  log: Logger
  /** Time between two samples of a sandbox (the server's `metricsIntervalMs`). */
  intervalMs: number
}

export class SandboxSampler {
  readonly #live: LiveSandboxes
  readonly #log: Logger
  readonly #intervalMs: number
  #interval: NodeJS.Timeout | undefined
  #stopped = false

  constructor(options: SandboxSamplerOptions) {
    this.#live = options.live
    this.#log = options.log
    this.#intervalMs = options.intervalMs
  }

  start(): void {
    this.#interval = setInterval(() => void this.#sampleAll(), this.#intervalMs)
    this.#interval.unref()
  }

  /** Stops sampling; a round under way takes no further samples. */
  stop(): void {
    this.#stopped = true
    clearInterval(this.#interval)
  }

  /**
   * Metric samples between `startMs` and `endMs` (Unix ms); a running sandbox with none yet
   * is sampled now, so a fresh sandbox never answers an empty list.
   * @throws SandboxNotFoundError (404)
   */
  async samples(id: string, startMs?: number, endMs?: number): Promise<MetricSample[]> {
    const live = this.#live.require(id)
    if (live.record.state === 'running' && live.samples.length === 0) {
      await this.#sample(live)
    }
    return live.samples.filter(
      (s) =>
        (startMs === undefined || s.timestampMs >= startMs) &&
        (endMs === undefined || s.timestampMs <= endMs),
    )
  }

  async #sampleAll(): Promise<void> {
    for (const live of [...this.#live.values()]) {
      const sandboxId = live.record.id
      // Skipped: paused, or removed while an earlier sample of this round was taken.
      if (this.#stopped || live.record.state !== 'running' || this.#live.get(sandboxId) !== live) {
        continue
      }
      await this.#sample(live).catch((err: unknown) =>
        this.#log.debug({ err: errorMessage(err), sandboxId }, 'cannot sample metrics'),
      )
    }
  }

  async #sample(live: LiveSandbox): Promise<void> {
    if (live.sandbox === undefined) {
      return
    }
    const stats = await live.sandbox.stats()
    const now = Date.now()
    const cpuCount = Math.max(1, Math.ceil(live.record.limits.cpus))
    const last = live.lastCpu
    const cpuUsedPct =
      last === undefined || now <= last.atMs
        ? 0
        : Math.min(
            100,
            ((stats.cpuUsageUs - last.cpuUsageUs) / ((now - last.atMs) * 1000 * cpuCount)) * 100,
          )
    live.lastCpu = { atMs: now, cpuUsageUs: stats.cpuUsageUs }
    live.samples.push({
      timestampMs: now,
      cpuCount,
      cpuUsedPct: Math.round(Math.max(0, cpuUsedPct) * 100) / 100,
      memUsed: stats.memoryBytes,
      memTotal: stats.memoryLimitBytes,
      memCache: 0,
      diskUsed: stats.diskUsedBytes,
      diskTotal: stats.diskTotalBytes,
    })
    if (live.samples.length > maxSamples) {
      live.samples.splice(0, live.samples.length - maxSamples)
    }
  }
}
