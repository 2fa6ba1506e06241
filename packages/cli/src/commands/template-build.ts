/**
 * `sandcell template build [DIR]`: builds a template from a Dockerfile on a server. The e2b SDK's
 * own `Template` parses the Dockerfile, hashes and uploads the COPY sources and starts the build,
 * so the wire behaviour is the SDK's; the CLI then follows the build's log with its steps.
 */
import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Command } from 'commander'
import type * as E2b from 'e2b'
import type { SandcellClient } from '@sandcell/sdk'
import {
  InvalidArgumentError,
  UnauthenticatedError,
  UnavailableError,
  errorMessage,
} from '@sandcell/shared'
import { collectList, parsePositive } from '../arguments.js'
import { exitBuildFailed, exitInterrupted, listenForInterrupts } from '../command-exit.js'
import { createProgressBar } from '../progress-bar.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import {
  createBuildTracker,
  describeBuildFailure,
  formatLogLine,
  templateNameFromDir,
  type BuildTracker,
  type LogLine,
} from '../template-format.js'

interface BuildFlags extends ServerFlags {
  file?: string
  name?: string
  tag: string[]
  cache: boolean
  cpu?: number
  memoryMb?: number
}

interface BuildView {
  log(line: LogLine): void
  close(): void
}

/**
 * Every log line on stdout; on a terminal, a progress line below them on stderr (redrawn each
 * second, so a quiet step still shows time passing).
 */
function createBuildView(tracker: BuildTracker): BuildView {
  const bar = process.stderr.isTTY ? createProgressBar() : undefined
  const draw = (): void => {
    const position = tracker.position()
    bar?.update({
      phase: position.phase,
      done: 0,
      total: 0,
      fraction: position.fraction,
      message: position.text,
    })
  }
  const timer = bar === undefined ? undefined : setInterval(draw, 1000)
  return {
    log(line) {
      tracker.observe(line)
      bar?.clear()
      process.stdout.write(formatLogLine(line))
      draw()
    },
    close() {
      clearInterval(timer)
      bar?.clear()
    },
  }
}

/** The Dockerfile's text. @throws InvalidArgumentError naming the file when it cannot be read */
async function readDockerfile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
    throw new InvalidArgumentError(
      missing
        ? `no Dockerfile at ${path}; give the build context directory, or the Dockerfile with -f`
        : `cannot read the Dockerfile ${path}: ${errorMessage(err)}`,
      { cause: err },
    )
  }
}

/**
 * The e2b SDK's failures in sandcell's terms, so the failure line says what to change: a
 * refused key, a server that cannot be reached.
 */
function fromSdkError(err: unknown, e2b: typeof E2b, serverUrl: string): unknown {
  if (err instanceof e2b.AuthenticationError) {
    return new UnauthenticatedError(`unauthorized (401) by ${serverUrl}: ${err.message}`, {
      cause: err,
    })
  }
  if (err instanceof TypeError && err.message === 'fetch failed') {
    return new UnavailableError(
      `cannot reach the sandcell server at ${serverUrl} (${errorMessage(err.cause ?? err)})`,
      { cause: err },
    )
  }
  return err
}

async function build(
  client: SandcellClient,
  dir: string,
  flags: BuildFlags,
  apiKey: string | undefined,
): Promise<number> {
  if (apiKey === undefined) {
    throw new UnauthenticatedError('the server needs an API key')
  }
  const contextDir = resolve(dir)
  const dockerfilePath = resolve(flags.file ?? join(contextDir, 'Dockerfile'))
  const dockerfile = await readDockerfile(dockerfilePath)
  const name = flags.name ?? templateNameFromDir(contextDir)
  // Loaded here: the SDK takes ~170 ms to load, which no other command should pay.
  const e2b = await import('e2b')
  let template: E2b.TemplateBuilder
  try {
    template = e2b.Template({ fileContextPath: contextDir }).fromDockerfile(dockerfile)
  } catch (err) {
    throw new InvalidArgumentError(`${dockerfilePath}: ${errorMessage(err)}`, { cause: err })
  }
  const tracker = createBuildTracker()
  const view = createBuildView(tracker)
  const interrupts = listenForInterrupts()
  let started: { templateId: string; buildId: string } | undefined
  try {
    started = await e2b.Template.buildInBackground(template, name, {
      apiUrl: client.apiUrl,
      apiKey,
      tags: flags.tag,
      skipCache: !flags.cache,
      ...(flags.cpu === undefined ? {} : { cpuCount: flags.cpu }),
      ...(flags.memoryMb === undefined ? {} : { memoryMB: flags.memoryMb }),
      onBuildLogs: (entry) => view.log({ level: entry.level, message: entry.message }),
      signal: interrupts.signal,
    })
    const end = await client.templates.readBuildLog(started.templateId, started.buildId, {
      follow: true,
      onLog: (line) => view.log(line),
      signal: interrupts.signal,
    })
    view.close()
    if (end.status === 'error') {
      process.stderr.write(`sandcell: ${describeBuildFailure(name, end.reason, tracker)}\n`)
      return exitBuildFailed
    }
    process.stdout.write(
      `built ${name} (template ${started.templateId}, build ${started.buildId}); start a sandbox from it with: sandcell sandbox create --template ${name}\n`,
    )
    return 0
  } catch (err) {
    view.close()
    if (!interrupts.interrupted()) {
      throw fromSdkError(err, e2b, client.apiUrl)
    }
    process.stderr.write(
      started === undefined
        ? 'sandcell: interrupted before the build started\n'
        : `sandcell: interrupted; the build goes on on the server: sandcell template logs ${name} --follow\n`,
    )
    return exitInterrupted
  } finally {
    interrupts.dispose()
  }
}

export function templateBuildCommand(context: CommandContext): Command {
  return withServerOptions(new Command('build'))
    .description('build a template from a Dockerfile on the server, showing each step and its log')
    .argument('[dir]', 'the build context: COPY and ADD sources are relative to it', '.')
    .option('-f, --file <dockerfile>', 'the Dockerfile (default DIR/Dockerfile)')
    .option('--name <name>', "the template's name, may end in :tag (default: DIR's name)")
    .option('--tag <tag>', 'also give the build this tag (repeatable)', collectList, [])
    .option('--no-cache', 'run every step again instead of taking layers from the cache')
    .option('--cpu <count>', 'CPUs of sandboxes from this template', parsePositive('--cpu', true))
    .option(
      '--memory-mb <mib>',
      'memory of sandboxes from this template, MiB',
      parsePositive('--memory-mb', true),
    )
    .addHelpText(
      'after',
      '\nExit status: 0 when the template is built, 1 when the build failed (the step and the reason on stderr),\n125 when sandcell could not run it (no server, bad key, unreadable Dockerfile), 130 on Ctrl-C.',
    )
    .allowExcessArguments(false)
    .action(async (dir: string, flags: BuildFlags) => {
      process.exitCode = await withClient(context, flags, (client) =>
        build(client, dir, flags, flags.apiKey ?? context.config().apiKey),
      )
    })
}
