/** What a run asks for, what it reports while it runs, and what it answers: the engine's API types. */
import type { ResolvedLanguage } from './language-catalog.js'
import type { RunControl } from './run-control.js'
import type { RunFile } from './run-files.js'
import type { StageLimits } from './stage-limits.js'
import type { OutputStream } from './stage-output.js'
import type { StageName, StageResult } from './stage-result.js'

export interface RunHooks {
  /** The sandbox is ready and the files are written (Piston's `runtime` message). */
  onRuntime?: (language: ResolvedLanguage) => void
  onStage?: (stage: StageName) => void
  /** Output as it arrives (only what is kept under the cap). */
  onOutput?: (stage: StageName, stream: OutputStream, text: string) => void
  onStageEnd?: (stage: StageName, result: StageResult) => void
}

/** Input of a stage that stays open until it ends (interactive runs), or all of it at once. */
export type StageInput = Uint8Array | AsyncIterable<Uint8Array>

export interface RunRequest {
  language: ResolvedLanguage
  /** Validated files; the first source file is the main file. */
  files: readonly RunFile[]
  /** Fed to the run stage's stdin; a stream stays open until it ends. */
  stdin?: StageInput | undefined
  args?: readonly string[] | undefined
  /** Per-stage limits, already checked against the language's. */
  compile?: Partial<StageLimits> | undefined
  run?: Partial<StageLimits> | undefined
  hooks?: RunHooks | undefined
  control?: RunControl | undefined
  /** Aborting kills the run and rejects with the signal's reason. */
  signal?: AbortSignal | undefined
}

export interface RunResult {
  language: string
  version: string
  template: string
  compile?: StageResult
  /** Absent when the compile stage failed (the run stage is skipped). */
  run?: StageResult
  /** Where the time went, ms: queue, acquire, write, compile, run. */
  timingsMs: Record<string, number>
}
