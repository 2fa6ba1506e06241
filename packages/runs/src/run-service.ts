/**
 * One-shot code execution on sandboxes: each run gets a fresh sandbox no other run touched
 * (from a per-template warm pool sized from recent demand), its files written through the agent,
 * an optional compile stage and a run stage with their own timeouts and memory limits, output
 * capped and reported, and the sandbox destroyed after, never reused. Runs are bounded in
 * number; excess ones queue with a deadline, then fail with 429 and a Retry-After estimate.
 * The server's Piston and Lambdo routes and the CLI's `run --local` share it.
 */
import { posix } from 'node:path'
import { runCommand } from '@sandcell/envd-client'
import { Signal, basicAuthorization, signalNumber } from '@sandcell/protocol'
import {
  NotFoundError,
  ResourceExhaustedError,
  Semaphore,
  type Logger,
  StepTimer,
} from '@sandcell/shared'
import {
  WarmPool,
  type Driver,
  type Sandbox,
  type SandboxLimits,
  type SandboxStats,
} from '@sandcell/runtime'
import { DemandEstimator } from './demand.js'
import type { LanguageCatalog, ResolvedLanguage } from './language-catalog.js'
import { expandCommand, usesPlaceholder } from './languages.js'
import type { RunFile } from './run-files.js'
import { StageOutput, type OutputStream } from './stage-output.js'

/** Where a run's files go, as the sandbox's user. */
export const runDirectory = '/home/user/code'
/** The file `{{stdin}}` names, outside the run directory so no request file can clash. */
const stdinPath = '/home/user/.run-stdin'
const runUser = 'user'
/** Processes and threads of the agent itself, on top of the language's `processes`. */
const agentPids = 32
/** The smallest memory a container sandbox can have (its agent included). */
const minSandboxMemoryMiB = 64
/** How often pool sizes follow demand, ms. */
const resizeIntervalMs = 2000

/** The run settings of the server's config (`run.*`); see config/schema.ts. */
export interface RunSettings {
  maxConcurrent: number
  queueTimeoutMs: number
  maxQueued: number
  outputMaxChars: number
  maxFiles: number
  maxFilesBytes: number
  memoryOverheadMiB: number
  poolMin: number
  poolMax: number
}

export type StageName = 'compile' | 'run'

/** Piston's two-letter stage status. */
export type StageStatus = 'RE' | 'SG' | 'TO' | 'OL' | 'EL' | 'XX'

export interface StageResult {
  stdout: string
  stderr: string
  /** stdout and stderr in arrival order. */
  output: string
  /** Exit code, or null when a signal ended the stage. */
  code: number | null
  signal: NodeJS.Signals | null
  /** null when the stage exited 0. */
  status: StageStatus | null
  /** Why the stage failed, in words; null when it exited 0. */
  message: string | null
  wallTimeMs: number
  /** CPU time of the sandbox during the stage, ms (its agent's share included). */
  cpuTimeMs: number | null
  /** Peak memory the stage added, bytes, when the sandbox's peak moved during it. */
  memoryBytes: number | null
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

/** Sends signals to the stage running now (interactive runs). */
export class RunControl {
  #send: ((signal: 'SIGTERM' | 'SIGKILL') => Promise<void>) | undefined

  /** Signals the running stage's process group; a no-op between stages. */
  async signal(signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
    await this.#send?.(signal)
  }

  /** @internal the run service attaches the running stage. */
  attach(send: ((signal: 'SIGTERM' | 'SIGKILL') => Promise<void>) | undefined): void {
    this.#send = send
  }
}

export interface RunHooks {
  /** The sandbox is ready and the files are written (Piston's `runtime` message). */
  onRuntime?: (language: ResolvedLanguage) => void
  onStage?: (stage: StageName) => void
  /** Output as it arrives (only what is kept under the cap). */
  onOutput?: (stage: StageName, stream: OutputStream, text: string) => void
  onStageEnd?: (stage: StageName, result: StageResult) => void
}

export interface RunRequest {
  language: ResolvedLanguage
  /** Validated files; the first source file is the main file. */
  files: readonly RunFile[]
  /** Fed to the run stage's stdin; a stream stays open until it ends. */
  stdin?: Uint8Array | AsyncIterable<Uint8Array> | undefined
  args?: readonly string[] | undefined
  /** Per-stage limits, already checked against the language's. */
  compile?: Partial<Limits> | undefined
  run?: Partial<Limits> | undefined
  hooks?: RunHooks | undefined
  control?: RunControl | undefined
  /** Aborting kills the run and rejects with the signal's reason. */
  signal?: AbortSignal | undefined
}

interface Limits {
  timeoutMs: number
  memoryMiB: number
}

/** Prometheus hooks the server passes in. */
export interface RunMetrics {
  finished(language: string, outcome: string, seconds: number): void
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

/** The outcome of a stage in Piston's terms. */
export function describeStage(input: {
  code: number | null
  signal: NodeJS.Signals | null
  timedOut: boolean
  exceeded: OutputStream | undefined
  oomKilled: boolean
  limits: Limits
  outputMaxChars: number
}): Pick<StageResult, 'code' | 'signal' | 'status' | 'message'> {
  if (input.exceeded !== undefined) {
    return {
      code: null,
      signal: 'SIGKILL',
      status: input.exceeded === 'stdout' ? 'OL' : 'EL',
      message: `${input.exceeded} length exceeded (limit ${input.outputMaxChars} characters)`,
    }
  }
  if (input.timedOut) {
    return {
      code: null,
      signal: 'SIGKILL',
      status: 'TO',
      message: `Time limit exceeded (${input.limits.timeoutMs} ms wall clock)`,
    }
  }
  if (input.signal !== null) {
    return {
      code: null,
      signal: input.signal,
      status: 'SG',
      message: input.oomKilled
        ? `Out of memory (limit ${input.limits.memoryMiB} MiB)`
        : `Caught fatal signal ${signalNumber(input.signal)}`,
    }
  }
  const code = input.code ?? 0
  return code === 0
    ? { code, signal: null, status: null, message: null }
    : { code, signal: null, status: 'RE', message: `Exited with error status ${code}` }
}

export class RunService {
  readonly catalog: LanguageCatalog
  readonly settings: RunSettings
  readonly #options: RunServiceOptions
  readonly #log: Logger
  readonly #pool: WarmPool
  readonly #slots: Semaphore
  readonly #demand = new Map<string, DemandEstimator>()
  readonly #sizes = new Map<string, number>()
  /** Mean time a run holds its slot, ms, for Retry-After. */
  #meanHoldMs = 1000
  #resizer: NodeJS.Timeout | undefined
  #closed = false
  readonly #inFlight = new Set<Promise<unknown>>()

  constructor(options: RunServiceOptions) {
    this.#options = options
    this.catalog = options.catalog
    this.settings = options.settings
    this.#log = options.log.child({ component: 'server.runs' })
    this.#slots = new Semaphore(options.settings.maxConcurrent)
    this.#pool = new WarmPool({
      driver: options.driver,
      log: options.log,
      sizes: {},
      limits: this.#sandboxLimits({ memoryMiB: 128, timeoutMs: 0 }, 64),
      // Runs are offline unless their language says otherwise: pooled ones have loopback only.
      network: false,
    })
  }

  /**
   * Probes the languages' templates and keeps warm pools for the templates in use (at least
   * `poolMin` each), resized from demand. Without it (the CLI) every run creates its sandbox.
   */
  start(): void {
    this.catalog.warmUp()
    this.#pool.start()
    void this.catalog
      .available()
      .then((languages) => {
        for (const template of new Set(languages.map((l) => l.template))) {
          this.#estimator(template)
        }
        this.#resizeAll()
      })
      .catch((err: unknown) => this.#log.error({ err }, 'cannot size the run pools'))
    this.#resizer = setInterval(() => this.#resizeAll(), resizeIntervalMs)
    this.#resizer.unref()
  }

  #estimator(template: string): DemandEstimator {
    let estimator = this.#demand.get(template)
    if (estimator === undefined) {
      estimator = new DemandEstimator({
        min: this.settings.poolMin,
        max: this.settings.poolMax,
        windowMs: 30_000,
        createMs: 200,
      })
      this.#demand.set(template, estimator)
    }
    return estimator
  }

  #resizeAll(): void {
    if (this.#closed || this.#resizer === undefined) {
      return
    }
    const now = performance.now()
    for (const [template, estimator] of this.#demand) {
      const size = estimator.target(now)
      if (this.#sizes.get(template) !== size) {
        this.#sizes.set(template, size)
        this.#log.debug({ template, size }, 'run pool resized')
        // Tracked so that close() waits for the sandboxes a shrink destroys.
        this.#track(
          this.#pool
            .resize(template, size)
            .catch((err: unknown) => this.#log.warn({ err, template }, 'cannot resize a run pool')),
        )
      }
    }
  }

  /** Ready sandboxes per template in the run pools. */
  poolReady(): Record<string, number> {
    return this.#pool.readyCounts()
  }

  /** Runs waiting for a slot, and running. */
  load(): { running: number; waiting: number } {
    return { running: this.#slots.active, waiting: this.#slots.waiting }
  }

  /** Seconds a client should wait before trying again, from the queue and the mean run time. */
  retryAfterS(): number {
    const ahead = this.#slots.waiting + 1
    return Math.max(1, Math.ceil((ahead * this.#meanHoldMs) / this.settings.maxConcurrent / 1000))
  }

  /**
   * Checks a request's limits against the language's and fills in the defaults.
   * @returns the limits of both stages
   */
  stageLimits(language: ResolvedLanguage, stage: StageName, given: Partial<Limits> = {}): Limits {
    const configured = language.config.limits[stage]
    return {
      timeoutMs: given.timeoutMs ?? configured.timeoutMs,
      memoryMiB: given.memoryMiB ?? configured.memoryMiB,
    }
  }

  #sandboxLimits(limits: Limits, processes: number): SandboxLimits {
    return {
      cpus: this.#options.limits.cpus,
      diskMiB: this.#options.limits.diskMiB,
      memoryMiB: Math.max(minSandboxMemoryMiB, limits.memoryMiB + this.settings.memoryOverheadMiB),
      pids: processes + agentPids,
    }
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
    const estimator = this.#estimator(language.template)
    estimator.arrived(queuedAt)
    this.#resizeAll()
    if (
      this.#slots.active >= this.settings.maxConcurrent &&
      this.#slots.waiting >= this.settings.maxQueued
    ) {
      this.#options.metrics?.rejected()
      return Promise.reject(this.#busy())
    }
    const queueTimeout = AbortSignal.timeout(this.settings.queueTimeoutMs)
    const queueSignal =
      request.signal === undefined ? queueTimeout : AbortSignal.any([request.signal, queueTimeout])
    return new Promise<RunResult>((resolve, reject) => {
      const slot = this.#slots.run(async () => {
        this.#options.metrics?.waiting(this.#slots.waiting)
        const heldAt = performance.now()
        let sandbox: Sandbox | undefined
        try {
          const result = await this.#run(request, (s) => (sandbox = s), queuedAt)
          resolve(result)
          this.#options.metrics?.finished(
            language.config.name,
            result.run?.status ?? (result.compile?.status ? 'compile_error' : 'ok'),
            (performance.now() - queuedAt) / 1000,
          )
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)))
          this.#options.metrics?.finished(
            language.config.name,
            'error',
            (performance.now() - queuedAt) / 1000,
          )
        } finally {
          request.control?.attach(undefined)
          if (sandbox !== undefined) {
            await sandbox.destroy({ reason: 'run finished' }).catch((err: unknown) => {
              this.#log.error({ err, sandboxId: sandbox?.id }, 'cannot destroy a run sandbox')
            })
          }
          const holdMs = performance.now() - heldAt
          this.#meanHoldMs = this.#meanHoldMs * 0.9 + holdMs * 0.1
          estimator.finished(holdMs)
        }
      }, queueSignal)
      this.#options.metrics?.waiting(this.#slots.waiting)
      const tracked = slot.catch((err: unknown) => {
        this.#options.metrics?.waiting(this.#slots.waiting)
        if (queueTimeout.aborted && request.signal?.aborted !== true) {
          this.#options.metrics?.rejected()
          reject(this.#busy())
        } else {
          reject(err instanceof Error ? err : new Error(String(err)))
        }
      })
      this.#track(tracked)
    })
  }

  #track(work: Promise<unknown>): void {
    this.#inFlight.add(work)
    void work.finally(() => this.#inFlight.delete(work))
  }

  #busy(): ResourceExhaustedError {
    const retryAfterS = this.retryAfterS()
    return new ResourceExhaustedError(
      `too many runs at once (${this.settings.maxConcurrent} running, ${this.#slots.waiting} waiting); retry after ${retryAfterS} s`,
      { details: { retryAfterS } },
    )
  }

  async #run(
    request: RunRequest,
    onSandbox: (sandbox: Sandbox) => void,
    queuedAt: number,
  ): Promise<RunResult> {
    const { language, hooks } = request
    const config = language.config
    const timer = new StepTimer({ decimals: 2 })
    const timingsMs = timer.timings
    const lap = (name: string): void => timer.step(name)
    timer.record('queue', timer.startedAt - queuedAt)
    const compileLimits = this.stageLimits(language, 'compile', request.compile)
    const runLimits = this.stageLimits(language, 'run', request.run)
    const firstLimits = config.compile === undefined ? runLimits : compileLimits
    const createdAt = performance.now()
    const { sandbox, pooled } = await this.#pool.acquire(
      {
        template: language.template,
        limits: this.#sandboxLimits(firstLimits, config.processes),
        labels: this.#options.labels,
        network: config.network,
      },
      request.signal === undefined ? {} : { signal: request.signal },
    )
    onSandbox(sandbox)
    if (!pooled) {
      this.#estimator(language.template).created(performance.now() - createdAt)
    }
    lap('acquire')
    request.signal?.throwIfAborted()
    const connection = sandbox.connect()
    const sources = request.files.filter((file) => file.source)
    const main = sources[0] ?? request.files[0]
    const needsStdinFile =
      usesPlaceholder(config.run.argv, 'stdin') ||
      (config.compile !== undefined && usesPlaceholder(config.compile.argv, 'stdin'))
    const stdinBytes = request.stdin instanceof Uint8Array ? request.stdin : undefined
    await Promise.all([
      ...request.files.map((file) =>
        connection.uploadFile(posix.join(runDirectory, file.name), file.content, {
          user: runUser,
          ...(request.signal === undefined ? {} : { signal: request.signal }),
        }),
      ),
      ...(needsStdinFile
        ? [connection.uploadFile(stdinPath, stdinBytes ?? new Uint8Array(), { user: runUser })]
        : []),
    ])
    lap('write')
    hooks?.onRuntime?.(language)
    const values = {
      main: main?.name ?? config.main,
      files: sources.map((file) => file.name),
      args: request.args ?? [],
      dir: runDirectory,
      stdin: stdinPath,
      version: language.version,
    }
    const result: RunResult = {
      language: config.name,
      version: language.version,
      template: language.template,
      timingsMs,
    }
    let currentLimits = firstLimits
    const setMemory = async (limits: Limits): Promise<void> => {
      if (limits.memoryMiB !== currentLimits.memoryMiB) {
        await sandbox.setLimits(this.#sandboxLimits(limits, config.processes))
        currentLimits = limits
      }
    }
    if (config.compile !== undefined) {
      await setMemory(compileLimits)
      const compile = await this.#stage(sandbox, request, 'compile', {
        argv: expandCommand(config.compile.argv, values),
        limits: compileLimits,
        stdin: undefined,
      })
      lap('compile')
      result.compile = compile
      if (compile.status !== null) {
        return result
      }
    }
    await setMemory(runLimits)
    result.run = await this.#stage(sandbox, request, 'run', {
      argv: expandCommand(config.run.argv, values),
      limits: runLimits,
      stdin: request.stdin,
    })
    lap('run')
    this.#log.debug(
      { sandboxId: sandbox.id, language: config.name, timingsMs, pooled },
      'run finished',
    )
    return result
  }

  async #stage(
    sandbox: Sandbox,
    request: RunRequest,
    stage: StageName,
    spec: { argv: string[]; limits: Limits; stdin: RunRequest['stdin'] },
  ): Promise<StageResult> {
    const { hooks } = request
    hooks?.onStage?.(stage)
    const connection = sandbox.connect()
    const kill = new AbortController()
    const output = new StageOutput(this.settings.outputMaxChars, () =>
      kill.abort(new Error('output limit')),
    )
    const before = await sandbox.stats()
    const started = performance.now()
    const [cmd, ...args] = spec.argv as [string, ...string[]]
    let outcome: { code: number | null; signal: NodeJS.Signals | null }
    let timedOut = false
    let stderrNote = ''
    let pid: number | undefined
    let pending: 'SIGTERM' | 'SIGKILL' | undefined
    const sendSignal = async (signal: 'SIGTERM' | 'SIGKILL'): Promise<void> => {
      if (pid === undefined) {
        // Not started yet: sent as soon as it is.
        pending = signal
        return
      }
      await connection.process.sendSignal(
        {
          process: { selector: { case: 'pid', value: pid } },
          signal: signal === 'SIGKILL' ? Signal.SIGKILL : Signal.SIGTERM,
        },
        { headers: { authorization: basicAuthorization(runUser) } },
      )
    }
    request.control?.attach(sendSignal)
    try {
      const result = await runCommand(connection, {
        cmd,
        args,
        envs: { ...request.language.config.env },
        cwd: runDirectory,
        user: runUser,
        timeoutMs: spec.limits.timeoutMs,
        kill: kill.signal,
        onStart: (started) => {
          pid = started
          if (pending !== undefined) {
            sendSignal(pending).catch((err: unknown) =>
              this.#log.debug({ err, pid }, 'cannot signal a run'),
            )
          }
        },
        ...(spec.stdin === undefined ||
        (spec.stdin instanceof Uint8Array && spec.stdin.byteLength === 0)
          ? {}
          : { stdin: spec.stdin }),
        ...(request.signal === undefined ? {} : { signal: request.signal }),
        onStdout: (chunk) => {
          const text = output.push('stdout', chunk)
          if (text !== '') {
            hooks?.onOutput?.(stage, 'stdout', text)
          }
        },
        onStderr: (chunk) => {
          const text = output.push('stderr', chunk)
          if (text !== '') {
            hooks?.onOutput?.(stage, 'stderr', text)
          }
        },
      })
      outcome = result.outcome
      timedOut = result.timedOut
    } catch (err) {
      if (!(err instanceof NotFoundError) || request.signal?.aborted === true) {
        throw err
      }
      // The program is missing (a compile step that made nothing, a toolchain gone): as a shell.
      stderrNote = `sandcell: ${cmd}: command not found\n`
      hooks?.onOutput?.(stage, 'stderr', stderrNote)
      outcome = { code: 127, signal: null }
    }
    const wallTimeMs = performance.now() - started
    const after = await sandbox.stats().catch((): SandboxStats | undefined => undefined)
    const captured = output.finish()
    const described = describeStage({
      ...outcome,
      timedOut,
      exceeded: captured.exceeded,
      oomKilled: after !== undefined && after.oomKills > before.oomKills,
      limits: spec.limits,
      outputMaxChars: this.settings.outputMaxChars,
    })
    const stageResult: StageResult = {
      stdout: captured.stdout,
      stderr: captured.stderr + stderrNote,
      output: captured.output + stderrNote,
      ...described,
      wallTimeMs: Math.round(wallTimeMs * 100) / 100,
      cpuTimeMs:
        after === undefined ? null : Math.round((after.cpuUsageUs - before.cpuUsageUs) / 10) / 100,
      memoryBytes:
        after !== undefined && after.memoryPeakBytes > before.memoryPeakBytes
          ? Math.max(0, after.memoryPeakBytes - before.memoryBytes)
          : null,
    }
    hooks?.onStageEnd?.(stage, stageResult)
    return stageResult
  }

  /** Stops resizing, waits for runs in flight, and destroys the idle pooled sandboxes. */
  async close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#resizer)
    await Promise.allSettled([...this.#inFlight])
    await this.catalog.close()
    await this.#pool.close()
  }
}
