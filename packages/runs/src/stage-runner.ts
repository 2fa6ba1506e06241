/**
 * Runs one stage of a run in its sandbox: the command as the run's user in the run directory,
 * stdin fed, output captured under the cap (its kill when reached), the wall-clock limit, the
 * client's signals forwarded; then the sandbox's CPU and memory during the stage and how it
 * ended.
 */
import { runCommand } from '@sandcell/envd-client'
import { Signal, basicAuthorization } from '@sandcell/protocol'
import type { Sandbox, SandboxStats } from '@sandcell/runtime'
import { NotFoundError, type Logger } from '@sandcell/shared'
import type { RunControl } from './run-control.js'
import type { RunHooks, StageInput } from './run-request.js'
import { runDirectory, runUser } from './run-sandbox.js'
import type { StageLimits } from './stage-limits.js'
import { StageOutput } from './stage-output.js'
import { classifyStage, type StageName, type StageResult } from './stage-result.js'

export interface StageSpec {
  stage: StageName
  argv: string[]
  env: Readonly<Record<string, string>>
  limits: StageLimits
  stdin: StageInput | undefined
}

export interface StageRunOptions {
  /** Characters kept per stream; reaching it kills the stage. */
  outputMaxChars: number
  hooks?: RunHooks | undefined
  control?: RunControl | undefined
  /** Aborting kills the stage and rejects with the signal's reason. */
  signal?: AbortSignal | undefined
  log: Logger
}

/**
 * @throws the signal's reason when aborted; SandcellErrors of the runtime (sandbox, agent). A
 *   missing program is no error: the stage exits 127 as in a shell.
 */
export async function runStage(
  sandbox: Sandbox,
  spec: StageSpec,
  options: StageRunOptions,
): Promise<StageResult> {
  const { hooks, control, signal, log } = options
  const { stage } = spec
  hooks?.onStage?.(stage)
  const connection = sandbox.connect()
  const kill = new AbortController()
  const output = new StageOutput(options.outputMaxChars, () =>
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
  const sendSignal = async (sent: 'SIGTERM' | 'SIGKILL'): Promise<void> => {
    if (pid === undefined) {
      // Not started yet: sent as soon as it is.
      pending = sent
      return
    }
    await connection.process.sendSignal(
      {
        process: { selector: { case: 'pid', value: pid } },
        signal: sent === 'SIGKILL' ? Signal.SIGKILL : Signal.SIGTERM,
      },
      { headers: { authorization: basicAuthorization(runUser) } },
    )
  }
  control?.attach(sendSignal)
  try {
    const result = await runCommand(connection, {
      cmd,
      args,
      envs: { ...spec.env },
      cwd: runDirectory,
      user: runUser,
      timeoutMs: spec.limits.timeoutMs,
      kill: kill.signal,
      onStart: (started) => {
        pid = started
        if (pending !== undefined) {
          sendSignal(pending).catch((err: unknown) =>
            log.debug({ err, pid }, 'cannot signal a run'),
          )
        }
      },
      ...(spec.stdin === undefined ||
      (spec.stdin instanceof Uint8Array && spec.stdin.byteLength === 0)
        ? {}
        : { stdin: spec.stdin }),
      ...(signal === undefined ? {} : { signal }),
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
    if (!(err instanceof NotFoundError) || signal?.aborted === true) {
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
  const result: StageResult = {
    stdout: captured.stdout,
    stderr: captured.stderr + stderrNote,
    output: captured.output + stderrNote,
    end: classifyStage({
      ...outcome,
      timedOut,
      exceeded: captured.exceeded,
      oomKilled: after !== undefined && after.oomKills > before.oomKills,
      timeoutMs: spec.limits.timeoutMs,
      memoryMiB: spec.limits.memoryMiB,
      outputMaxChars: options.outputMaxChars,
    }),
    wallTimeMs: Math.round(wallTimeMs * 100) / 100,
    cpuTimeMs:
      after === undefined ? null : Math.round((after.cpuUsageUs - before.cpuUsageUs) / 10) / 100,
    memoryBytes:
      after !== undefined && after.memoryPeakBytes > before.memoryPeakBytes
        ? Math.max(0, after.memoryPeakBytes - before.memoryBytes)
        : null,
  }
  hooks?.onStageEnd?.(stage, result)
  return result
}
