/**
 * What each step kind does, with E2B's semantics: RUN through `bash -l -c` as the current (or
 * given) user in the current workdir with the accumulated env; COPY of uploaded files with owner
 * and mode; ENV (state only); WORKDIR created and owned by the current user; USER created when
 * missing.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { existsSync } from 'node:fs'
import { FileType, basicAuthorization } from '@sandcell/protocol'
import { runCommand, type AgentConnection } from '@sandcell/envd-client'
import { templateShell, type ContainerDriver, type Sandbox } from '@sandcell/runtime'
import { BuildFailedError } from '@sandcell/shared'
import type { BuildPlan, TemplateStep } from './build-request.js'
import { lineSplitter, type BuildLogSink } from './build-log.js'
import { applyEnv, currentDir, isValidUserName, resolveWorkdir, shellQuote } from './build-state.js'
import { fileBody, prepareCopyArchive } from './copy-archive.js'
import type { BuildState } from './layer-store.js'

/** What the step kinds need from the builder. */
export interface StepContext {
  plan: BuildPlan
  driver: ContainerDriver
  filesDir: string
  stepTimeoutMs: number
  log: BuildLogSink
  signal?: AbortSignal
  /** Runs `run` in a build sandbox on the stack and captures its changes. */
  inSandbox(
    stack: { lowerDirs: string[]; hostBinds: readonly string[]; state: BuildState },
    step: string,
    run: (connection: AgentConnection, sandbox: Sandbox) => Promise<void>,
  ): Promise<{ scratch: string; empty: boolean }>
}

/** The step as its log line shows it. */
export function stepSummary(step: TemplateStep): string {
  switch (step.type) {
    case 'ENV': {
      const pairs: string[] = []
      for (let i = 0; i + 1 < step.args.length; i += 2) {
        pairs.push(`${step.args[i] ?? ''}=${step.args[i + 1] ?? ''}`)
      }
      return `ENV ${pairs.join(' ')}`
    }
    case 'COPY':
      return `COPY ${step.args[0] ?? ''} ${step.args[1] ?? ''}`
    default:
      return `${step.type} ${step.args[0] ?? ''}`
  }
}

/**
 * Runs a shell script as root in a build sandbox, its output into the log.
 * @throws BuildFailedError at `step` when it exits non-zero or outlives `timeoutMs`
 */
export async function runScriptAsRoot(
  connection: AgentConnection,
  script: string,
  step: string,
  log: BuildLogSink,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<void> {
  await runLogged(connection, { command: script, user: 'root', env: {} }, step, log, options)
}

async function runLogged(
  connection: AgentConnection,
  run: { command: string; user: string; env: Record<string, string>; cwd?: string },
  step: string,
  log: BuildLogSink,
  options: { timeoutMs?: number; signal?: AbortSignal },
): Promise<void> {
  const shell = await templateShell(connection)
  const emit = (line: string): void => log({ level: 'info', message: line, step })
  const stdout = lineSplitter(emit)
  const stderr = lineSplitter(emit)
  const result = await runCommand(connection, {
    ...shell(run.command),
    user: run.user,
    envs: run.env,
    ...(run.cwd === undefined ? {} : { cwd: run.cwd }),
    onStdout: (chunk) => stdout.push(chunk),
    onStderr: (chunk) => stderr.push(chunk),
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  })
  stdout.flush()
  stderr.flush()
  if (result.timedOut) {
    throw new BuildFailedError(
      step,
      `the command did not finish within ${Math.round((options.timeoutMs ?? 0) / 1000)} s and was killed`,
    )
  }
  if (result.exitCode !== 0) {
    throw new BuildFailedError(step, `the command exited with code ${result.exitCode}`)
  }
}

/** Whether `path` is a directory inside the sandbox (as root). */
async function isDirectory(connection: AgentConnection, path: string): Promise<boolean> {
  try {
    const { entry } = await connection.filesystem.stat(
      { path },
      { headers: { authorization: basicAuthorization('root') } },
    )
    return entry?.type === FileType.DIRECTORY
  } catch {
    return false
  }
}

/** COPY's mode argument (octal, as the SDK writes it: "0755"). */
function parseMode(step: string, mode: string): number {
  if (!/^[0-7]{1,4}$/.test(mode)) {
    throw new BuildFailedError(
      step,
      `COPY mode ${JSON.stringify(mode)} is not an octal mode like 0755`,
    )
  }
  return Number.parseInt(mode, 8)
}

/** A COPY: the step's uploaded archive, renamed for its destination, extracted by the agent. */
async function copyFiles(
  context: StepContext,
  connection: AgentConnection,
  step: TemplateStep,
  state: BuildState,
  name: string,
): Promise<void> {
  const [src = '', dest = '', owner = '', mode = ''] = step.args
  if (step.filesHash === undefined) {
    throw new BuildFailedError(
      name,
      `COPY ${src}: the step has no filesHash (upload its files first)`,
    )
  }
  const archive = join(context.filesDir, `${step.filesHash}.tar`)
  if (!existsSync(archive)) {
    throw new BuildFailedError(
      name,
      `COPY ${src}: its files (hash ${step.filesHash}) were never uploaded`,
    )
  }
  const work = mkdtempSync(join(tmpdir(), 'sandcell-copy-'))
  try {
    const repacked = join(work, 'copy.tar')
    const target = await prepareCopyArchive(archive, repacked, {
      src,
      dest,
      baseDir: currentDir(state),
      isDirectory: (path) => isDirectory(connection, path),
    })
    await connection.uploadArchive(target.root, fileBody(repacked), {
      user: owner === '' ? state.user : owner,
      ...(mode === '' ? {} : { mode: parseMode(name, mode) }),
      ...(context.signal === undefined ? {} : { signal: context.signal }),
    })
    context.log({
      level: 'debug',
      message: `copied ${target.entries} entries to ${target.root}`,
      step: name,
    })
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

/**
 * Runs one step of the plan on the stack.
 * @returns its scratch layer (absent when it only changes state) and the state after it
 */
export async function runSandboxStep(
  context: StepContext,
  stack: { lowerDirs: string[]; hostBinds: readonly string[]; state: BuildState },
  step: TemplateStep,
  name: string,
): Promise<{ scratch?: string; empty: boolean; state: BuildState }> {
  const state = stack.state
  const options = {
    timeoutMs: context.stepTimeoutMs,
    ...(context.signal === undefined ? {} : { signal: context.signal }),
  }
  switch (step.type) {
    case 'ENV':
      if (step.args.length % 2 !== 0) {
        throw new BuildFailedError(name, 'ENV needs name and value pairs')
      }
      return { empty: true, state: applyEnv(state, step.args) }
    case 'RUN': {
      const [command = '', user] = step.args
      const made = await context.inSandbox(stack, name, (connection) =>
        runLogged(
          connection,
          {
            command,
            user: user ?? state.user,
            env: state.env,
            ...(state.workdir === undefined ? {} : { cwd: state.workdir }),
          },
          name,
          context.log,
          options,
        ),
      )
      return { ...made, state }
    }
    case 'COPY': {
      const made = await context.inSandbox(stack, name, (connection) =>
        copyFiles(context, connection, step, state, name),
      )
      return { ...made, state }
    }
    case 'WORKDIR': {
      const path = resolveWorkdir(state, step.args[0] ?? '')
      const owner = shellQuote(state.user)
      const made = await context.inSandbox(stack, name, (connection) =>
        runScriptAsRoot(
          connection,
          `[ -d ${shellQuote(path)} ] || { mkdir -p ${shellQuote(path)} && chown "$(id -u ${owner}):$(id -g ${owner})" ${shellQuote(path)}; }`,
          name,
          context.log,
          options,
        ),
      )
      return { ...made, state: { ...state, workdir: path } }
    }
    case 'USER': {
      const user = step.args[0] ?? ''
      if (!isValidUserName(user)) {
        throw new BuildFailedError(name, `USER ${JSON.stringify(user)} is not a valid user name`)
      }
      const quoted = shellQuote(user)
      const made = await context.inSandbox(stack, name, (connection) =>
        runScriptAsRoot(
          connection,
          [
            `if ! id -u ${quoted} >/dev/null 2>&1; then`,
            `  if command -v useradd >/dev/null 2>&1; then useradd --create-home --shell /bin/bash ${quoted};`,
            `  else adduser -D ${quoted}; fi`,
            'fi',
          ].join('\n'),
          name,
          context.log,
          options,
        ),
      )
      return { ...made, state: { ...state, user } }
    }
    default:
      throw new BuildFailedError(
        name,
        `step type ${step.type} is not supported (sandcell runs RUN, COPY, ENV, WORKDIR and USER)`,
      )
  }
}
