/**
 * Progress of a Debian template build: its phases, the share of the whole build each stage
 * takes, and the tracker that turns stage changes and counts into monotonic reports.
 */
import type { TemplateProgress } from '../../core/progress.js'

/** The steps of a template build, in the order they first occur. */
export type TemplateBuildPhase =
  | 'waiting'
  | 'preparing'
  | 'resolving'
  | 'downloading'
  | 'extracting'
  | 'installing'
  | 'configuring'
  | 'shifting'
  | 'finishing'

/**
 * One progress report. A phase can occur more than once: mmdebstrap resolves, downloads and
 * installs twice (the base system, then the requested packages). Within one occurrence `done`
 * never decreases, and a countable occurrence (`total > 0`) ends with a report where
 * `done === total`. `fraction` covers the whole build and never decreases, so a single bar
 * with an ETA can be drawn from it alone.
 */
export interface TemplateBuildProgress extends TemplateProgress {
  phase: TemplateBuildPhase
  /** Units done in this occurrence of the phase. */
  done: number
  /** Units in this occurrence of the phase; 0 when it cannot be counted (draw a spinner). */
  total: number
  /** What `done` counts: packages fetched, dpkg steps (an unpack and a setup per package), files. */
  unit?: 'packages' | 'steps' | 'files'
  /** The whole build, 0 to 1, weighted by how long each part typically takes. */
  fraction: number
  /** What happens now, e.g. "Unpacking libc6:amd64" or "waiting for pid 4242". */
  message?: string
}

interface Stage {
  phase: TemplateBuildPhase
  /** Share of the whole build where this stage starts and ends, from measured builds. */
  from: number
  to: number
}

// From a measured build (68 s on a 2-core VM, fast mirror): dpkg is ~70% of it, downloads ~12%.
const stages = {
  waiting: { phase: 'waiting', from: 0, to: 0 },
  preparing: { phase: 'preparing', from: 0, to: 0.02 },
  update: { phase: 'resolving', from: 0.02, to: 0.07 },
  baseResolve: { phase: 'resolving', from: 0.07, to: 0.08 },
  baseDownload: { phase: 'downloading', from: 0.08, to: 0.14 },
  extract: { phase: 'extracting', from: 0.14, to: 0.23 },
  baseInstall: { phase: 'installing', from: 0.23, to: 0.46 },
  restResolve: { phase: 'resolving', from: 0.46, to: 0.47 },
  restDownload: { phase: 'downloading', from: 0.47, to: 0.53 },
  restInstall: { phase: 'installing', from: 0.53, to: 0.975 },
  hooks: { phase: 'configuring', from: 0.975, to: 0.98 },
  configuring: { phase: 'configuring', from: 0.98, to: 0.99 },
  shifting: { phase: 'shifting', from: 0.99, to: 0.998 },
  finishing: { phase: 'finishing', from: 0.998, to: 1 },
} satisfies Record<string, Stage>

export type BuildStage = keyof typeof stages

/**
 * Turns stage changes and counts into {@link TemplateBuildProgress} reports: closes a countable
 * stage with `done === total` before the next begins and keeps `fraction` from going back.
 */
export class BuildProgressTracker {
  readonly #emit: ((progress: TemplateBuildProgress) => void) | undefined
  #stage: BuildStage | undefined
  #done = 0
  #total = 0
  #unit: TemplateBuildProgress['unit']
  #message: string | undefined
  #fraction = 0

  constructor(emit?: (progress: TemplateBuildProgress) => void) {
    this.#emit = emit
  }

  get stage(): BuildStage | undefined {
    return this.#stage
  }

  /** Starts a stage (or restarts the current one with a new total, e.g. once counted). */
  enter(
    stage: BuildStage,
    total = 0,
    unit?: TemplateBuildProgress['unit'],
    message?: string,
  ): void {
    const sameStage = stage === this.#stage
    if (!sameStage) {
      this.#close()
    }
    this.#stage = stage
    this.#done = sameStage ? Math.min(this.#done, total) : 0
    this.#total = total
    this.#unit = unit
    this.#message = message
    this.#report()
  }

  /** Sets how much of the stage is done; never goes back, never passes the total. */
  advance(done: number, message?: string): void {
    const next = this.#total > 0 ? Math.min(done, this.#total) : done
    if (
      next < this.#done ||
      (next === this.#done && (message ?? this.#message) === this.#message)
    ) {
      return
    }
    this.#done = next
    if (message !== undefined) {
      this.#message = message
    }
    this.#report()
  }

  step(message?: string): void {
    this.advance(this.#done + 1, message)
  }

  /** Changes the message without counting. */
  message(message: string): void {
    this.#message = message
    this.#report()
  }

  /** Ends the current stage; after the last one, `fraction` is 1. */
  complete(): void {
    this.#close()
  }

  #close(): void {
    if (this.#stage !== undefined && this.#total > 0 && this.#done < this.#total) {
      this.#done = this.#total
      this.#report()
    }
  }

  #report(): void {
    if (this.#stage === undefined) {
      return
    }
    const { phase, from, to } = stages[this.#stage]
    const share = this.#total > 0 ? this.#done / this.#total : 0
    this.#fraction = Math.max(this.#fraction, from + (to - from) * share)
    this.#emit?.({
      phase,
      done: this.#done,
      total: this.#total,
      ...(this.#unit === undefined ? {} : { unit: this.#unit }),
      fraction: Math.round(this.#fraction * 10000) / 10000,
      ...(this.#message === undefined ? {} : { message: this.#message }),
    })
  }
}
