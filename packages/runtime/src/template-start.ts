/**
 * What a built template's sandbox needs before anyone uses it: the agent gets the template's
 * environment, user and workdir, and the template's start command runs in the background until
 * its ready command succeeds (E2B's sandboxes start with it already running).
 */
import type { TemplateDefaults } from '@sandcell/images'
import { runCommand, type AgentConnection } from '@sandcell/envd-client'
import { basicAuthorization } from '@sandcell/protocol'
import { DriverError, delay, type Logger } from '@sandcell/shared'
import type { Sandbox } from './driver.js'

/** How often the ready command is tried (E2B: every 2 s; most servers are up far sooner). */
const readyPollMs = 100

export interface StartTemplateOptions {
  /** How long the ready command may keep failing. */
  readyTimeoutMs: number
  log: Logger
  signal?: AbortSignal
}

/** A command line for one of a template's shell commands. */
export interface ShellCommand {
  cmd: string
  args: string[]
}

/**
 * How a template's commands run: `bash -l -c` as on E2B when the image has bash, else the
 * image's `sh -c` (busybox and distroless-like images).
 */
export async function templateShell(
  connection: AgentConnection,
): Promise<(command: string) => ShellCommand> {
  const hasBash = await connection.filesystem
    .stat({ path: '/bin/bash' }, { headers: { authorization: basicAuthorization('root') } })
    .then(
      () => true,
      () => false,
    )
  return hasBash
    ? (command) => ({ cmd: '/bin/bash', args: ['-l', '-c', command] })
    : (command) => ({ cmd: '/bin/sh', args: ['-c', command] })
}

/**
 * Hands the agent the template's defaults, then starts its start command and waits until the
 * ready command exits 0 (without a ready command: until the start command has run 1 s).
 * @throws DriverError when the start command ends before ready, or ready never succeeds
 */
export async function startTemplate(
  connection: AgentConnection,
  defaults: TemplateDefaults,
  options: StartTemplateOptions,
): Promise<void> {
  await connection.init({
    envVars: defaults.env,
    accessToken: '',
    defaultUser: defaults.user,
    ...(defaults.workdir === undefined ? {} : { defaultWorkdir: defaults.workdir }),
  })
  if (defaults.startCmd === undefined) {
    return
  }
  const shell = await templateShell(connection)
  const common = {
    user: defaults.user,
    envs: defaults.env,
    ...(defaults.workdir === undefined ? {} : { cwd: defaults.workdir }),
  }
  const output: string[] = []
  const keep = (chunk: Uint8Array): void => {
    output.push(Buffer.from(chunk).toString('utf8'))
    if (output.length > 50) {
      output.shift()
    }
  }
  let ended: { exitCode: number } | undefined
  const startCmd = defaults.startCmd
  const started = new Promise<number>((resolve, reject) => {
    // Runs for the sandbox's whole life: the agent keeps it when this stream closes.
    runCommand(connection, {
      ...shell(startCmd),
      ...common,
      onStart: resolve,
      onStdout: keep,
      onStderr: keep,
    })
      .then((result) => {
        ended = { exitCode: result.exitCode }
      })
      .catch((err: unknown) => {
        reject(err instanceof Error ? err : new Error(String(err)))
        options.log.debug({ err }, 'template start command stream ended')
      })
  })
  const pid = await started
  options.log.debug({ pid }, 'template start command started')
  const deadline = Date.now() + options.readyTimeoutMs
  const readyCmd = defaults.readyCmd ?? 'sleep 1'
  for (;;) {
    options.signal?.throwIfAborted()
    if (ended !== undefined && ended.exitCode !== 0) {
      throw new DriverError(
        `the template's start command exited with code ${ended.exitCode} before it was ready: ${output.join('').trim().slice(-2000)}`,
      )
    }
    const ready = await runCommand(connection, {
      ...shell(readyCmd),
      ...common,
      timeoutMs: Math.max(1000, deadline - Date.now()),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    })
    if (ready.exitCode === 0) {
      return
    }
    if (Date.now() >= deadline) {
      throw new DriverError(
        `the template's ready command ${JSON.stringify(readyCmd)} did not succeed within ${options.readyTimeoutMs} ms`,
      )
    }
    await delay(readyPollMs, options.signal)
  }
}

/**
 * Starts a built template in a new sandbox (see `startTemplate`); a sandbox whose start fails
 * is destroyed, so that a failed create leaves nothing.
 * @throws DriverError as `startTemplate` does
 */
export async function startSandboxTemplate(
  sandbox: Sandbox,
  defaults: TemplateDefaults,
  options: StartTemplateOptions,
): Promise<void> {
  try {
    await startTemplate(sandbox.connect(), defaults, options)
  } catch (err) {
    await sandbox.destroy({ reason: 'the template did not start', cause: err })
    throw err
  }
}
