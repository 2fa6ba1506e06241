/**
 * One run once it holds its slot: a fresh sandbox from the pools sized for its first stage, its
 * files written, then the compile stage (when the language has one) and the run stage, the
 * sandbox's memory set to each stage's limit; a failed compile stage skips the run stage.
 */
import type { Sandbox } from '@sandcell/runtime'
import { StepTimer, type Logger } from '@sandcell/shared'
import { expandCommand, usesPlaceholder } from './languages.js'
import type { RunPools } from './run-pools.js'
import type { RunRequest, RunResult, StageInput } from './run-request.js'
import { runDirectory, stdinPath, writeRunFiles } from './run-sandbox.js'
import { runSandboxLimits, stageLimits, type RunSandboxSizing } from './stage-limits.js'
import { stageSucceeded, type StageName, type StageResult } from './stage-result.js'
import { runStage } from './stage-runner.js'

export interface RunJobContext {
  pools: RunPools
  sizing: RunSandboxSizing
  /** Labels on the run's sandbox. */
  labels: Record<string, string>
  outputMaxChars: number
  log: Logger
  /** Gets the sandbox as soon as there is one: the caller destroys it, whatever happens. */
  onSandbox: (sandbox: Sandbox) => void
}

/**
 * Runs the request's stages in a sandbox of its own.
 * @param queuedAt when the run arrived (performance.now()), for the `queue` timing
 * @throws the request signal's reason when aborted; SandcellErrors of the runtime (sandbox, agent)
 */
export async function runJob(
  request: RunRequest,
  queuedAt: number,
  context: RunJobContext,
): Promise<RunResult> {
  const { language, hooks } = request
  const config = language.config
  const timer = new StepTimer({ decimals: 2 })
  timer.record('queue', timer.startedAt - queuedAt)
  const limits = {
    compile: stageLimits(language, 'compile', request.compile),
    run: stageLimits(language, 'run', request.run),
  }
  let current = config.compile === undefined ? limits.run : limits.compile
  const { sandbox, pooled } = await context.pools.acquire(
    {
      template: language.template,
      limits: runSandboxLimits(context.sizing, current.memoryMiB, config.processes),
      labels: context.labels,
      network: config.network,
    },
    { signal: request.signal },
  )
  context.onSandbox(sandbox)
  timer.step('acquire')
  request.signal?.throwIfAborted()
  const sources = request.files.filter((file) => file.source)
  const main = sources[0] ?? request.files[0]
  const needsStdinFile =
    usesPlaceholder(config.run.argv, 'stdin') ||
    (config.compile !== undefined && usesPlaceholder(config.compile.argv, 'stdin'))
  const stdinBytes = request.stdin instanceof Uint8Array ? request.stdin : undefined
  await writeRunFiles(sandbox.connect(), request.files, {
    stdin: needsStdinFile ? (stdinBytes ?? new Uint8Array()) : undefined,
    signal: request.signal,
  })
  timer.step('write')
  hooks?.onRuntime?.(language)
  const values = {
    main: main?.name ?? config.main,
    files: sources.map((file) => file.name),
    args: request.args ?? [],
    dir: runDirectory,
    stdin: stdinPath,
    version: language.version,
  }
  const stage = async (
    name: StageName,
    argv: readonly string[],
    stdin: StageInput | undefined,
  ): Promise<StageResult> => {
    if (limits[name].memoryMiB !== current.memoryMiB) {
      await sandbox.setLimits(
        runSandboxLimits(context.sizing, limits[name].memoryMiB, config.processes),
      )
      current = limits[name]
    }
    const result = await runStage(
      sandbox,
      {
        stage: name,
        argv: expandCommand(argv, values),
        env: config.env,
        limits: limits[name],
        stdin,
      },
      {
        outputMaxChars: context.outputMaxChars,
        hooks,
        control: request.control,
        signal: request.signal,
        log: context.log,
      },
    )
    timer.step(name)
    return result
  }
  const result: RunResult = {
    language: config.name,
    version: language.version,
    template: language.template,
    timingsMs: timer.timings,
  }
  if (config.compile !== undefined) {
    result.compile = await stage('compile', config.compile.argv, undefined)
    if (!stageSucceeded(result.compile.end)) {
      return result
    }
  }
  result.run = await stage('run', config.run.argv, request.stdin)
  context.log.debug(
    { sandboxId: sandbox.id, language: config.name, timingsMs: result.timingsMs, pooled },
    'run finished',
  )
  return result
}
