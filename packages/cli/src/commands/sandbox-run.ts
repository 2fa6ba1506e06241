/**
 * `sandcell sandbox run`: a fresh sandbox, one command streamed through the agent, the command's
 * exit code, and the sandbox destroyed — like `docker run --rm`, in milliseconds.
 */
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander'
import { shellExitCode, signalNumber } from '@sandcell/protocol'
import { runCommand, type Sandbox, type SandboxLimits } from '@sandcell/runtime'
import { NotFoundError, errorMessage, type Logger } from '@sandcell/shared'
import type { CliConfig } from '../config.js'
import { createLocalDriver, ownerLabels, reapOrphans } from '../local-runtime.js'
import { prepareWithProgress } from '../progress-bar.js'

export interface SandboxRunFlags {
  template?: string
  memoryMb?: number
  cpus?: number
  pids?: number
  diskMb?: number
  timeoutMs?: number
  env: string[]
  cwd?: string
  user: string
  interactive?: boolean
  tty?: boolean
}

/** Exit code for failures of sandcell itself (not of the command), as `docker run` uses. */
export const exitSandcellFailed = 125
const exitNotFound = 127

function parsePositive(name: string, integer: boolean) {
  return (value: string): number => {
    const number = Number(value)
    if (!Number.isFinite(number) || number <= 0 || (integer && !Number.isInteger(number))) {
      throw new CommanderArgumentError(
        `${name} must be a positive ${integer ? 'integer' : 'number'}`,
      )
    }
    return number
  }
}

function parseEnv(value: string, previous: string[]): string[] {
  if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(value)) {
    throw new CommanderArgumentError(`--env takes KEY=VALUE, got ${JSON.stringify(value)}`)
  }
  return [...previous, value]
}

export function sandboxRunCommand(context: {
  config: () => Readonly<CliConfig>
  log: () => Logger
}): Command {
  return new Command('run')
    .description('run a command in a fresh sandbox, streaming its output, then destroy the sandbox')
    .option('--template <name>', 'template to start from (base, debian)')
    .option(
      '--memory-mb <n>',
      'memory limit in MiB, the agent included',
      parsePositive('--memory-mb', true),
    )
    .option('--cpus <n>', 'CPU cores (fractions allowed)', parsePositive('--cpus', false))
    .option('--pids <n>', 'maximum processes and threads', parsePositive('--pids', true))
    .option('--disk-mb <n>', 'writable disk size in MiB', parsePositive('--disk-mb', true))
    .option(
      '--timeout-ms <n>',
      'kill the command after this long',
      parsePositive('--timeout-ms', true),
    )
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', parseEnv, [])
    .option('--cwd <dir>', "working directory (default: the user's home)")
    .option('-u, --user <name>', 'user to run as inside the sandbox', 'user')
    .addOption(
      new Option('-i, --interactive', 'forward stdin (the default when stdin is not a terminal)'),
    )
    .addOption(new Option('-t, --tty', 'run the command in a pseudo-terminal'))
    .argument('<command>', 'program to run')
    .argument('[args...]', 'its arguments')
    .allowExcessArguments(false)
    .passThroughOptions()
    .action(async (cmd: string, args: string[], flags: SandboxRunFlags) => {
      process.exitCode = await sandboxRun(context.config(), context.log(), cmd, args, flags)
    })
}

async function* readStdin(): AsyncGenerator<Uint8Array> {
  for await (const chunk of process.stdin) {
    yield chunk as Buffer
  }
}

/** Runs the command; resolves to the exit code the CLI should end with. */
export async function sandboxRun(
  config: Readonly<CliConfig>,
  log: Logger,
  cmd: string,
  args: string[],
  flags: SandboxRunFlags,
): Promise<number> {
  const driver = createLocalDriver(config, log)
  const template = flags.template ?? config.defaultTemplate
  const limits: SandboxLimits = {
    memoryMiB: flags.memoryMb ?? config.limits.memoryMiB,
    cpus: flags.cpus ?? config.limits.cpus,
    pids: flags.pids ?? config.limits.pids,
    diskMiB: flags.diskMb ?? config.limits.diskMiB,
  }
  let sandbox: Sandbox | undefined
  const interrupts = { count: 0 }
  const abort = new AbortController()
  const onSignal = (): void => {
    interrupts.count += 1
    abort.abort(new Error('interrupted'))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    await reapOrphans(driver, log)
    await prepareWithProgress(driver, template, abort.signal)
    sandbox = await driver.create(
      { template, limits, labels: ownerLabels() },
      { signal: abort.signal },
    )
    const envs = Object.fromEntries(
      flags.env.map((pair) => {
        const at = pair.indexOf('=')
        return [pair.slice(0, at), pair.slice(at + 1)]
      }),
    )
    const forwardStdin = flags.interactive === true || !process.stdin.isTTY
    const tty = flags.tty === true && process.stdout.isTTY
    if (tty && process.stdin.isTTY) {
      process.stdin.setRawMode(true)
    }
    const oomBefore = (await sandbox.stats()).oomKills
    const result = await runCommand(sandbox.connect(), {
      cmd,
      args,
      envs,
      user: flags.user,
      ...(flags.cwd === undefined ? {} : { cwd: flags.cwd }),
      ...(forwardStdin ? { stdin: readStdin() } : {}),
      ...(tty ? { pty: { cols: process.stdout.columns, rows: process.stdout.rows } } : {}),
      ...(flags.timeoutMs === undefined ? {} : { timeoutMs: flags.timeoutMs }),
      signal: abort.signal,
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
    })
    if (result.outcome.signal !== null) {
      const oomKilled = (await sandbox.stats()).oomKills > oomBefore
      const why = result.timedOut
        ? `timed out after ${flags.timeoutMs} ms`
        : oomKilled
          ? `out of memory (limit ${limits.memoryMiB} MiB)`
          : interrupts.count > 0
            ? 'interrupted'
            : `${result.outcome.signal} (signal ${signalNumber(result.outcome.signal)})`
      process.stderr.write(`sandcell: ${cmd} killed: ${why}\n`)
    }
    return shellExitCode(result.outcome)
  } catch (err) {
    if (err instanceof NotFoundError && sandbox !== undefined) {
      process.stderr.write(`sandcell: ${cmd}: command not found (${errorMessage(err)})\n`)
      return exitNotFound
    }
    process.stderr.write(`sandcell: ${errorMessage(err)}\n`)
    return exitSandcellFailed
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (process.stdin.isTTY) {
      process.stdin.setRawMode(false)
    }
    process.stdin.destroy()
    await sandbox?.destroy({ reason: 'command finished' }).catch((err: unknown) => {
      process.stderr.write(`sandcell: could not remove the sandbox: ${errorMessage(err)}\n`)
    })
    await driver.close()
  }
}
