/**
 * `sandcell sandbox exec ID -- CMD [ARGS…]`: runs a command in a sandbox on the server, streaming
 * its output and stdin, and exits with the command's code like `sandbox run`.
 */
import { Command, Option } from 'commander'
import { runCommand, type EnvdClient } from '@sandcell/envd-client'
import { SandboxNotFoundError } from '@sandcell/shared'
import { pairsToRecord, parseEnv, parsePositive } from '../arguments.js'
import {
  commandExitCode,
  failureExitCode,
  listenForInterrupts,
  readStdin,
} from '../command-exit.js'
import {
  runningSandbox,
  withClient,
  withServerOptions,
  type CommandContext,
  type ServerFlags,
} from '../remote.js'

interface ExecFlags extends ServerFlags {
  user: string
  cwd?: string
  env: string[]
  timeoutMs?: number
  interactive?: boolean
}

export function sandboxExecCommand(context: CommandContext): Command {
  return withServerOptions(new Command('exec'))
    .description("run a command in a sandbox, streaming its output; exits with the command's code")
    .argument('<sandbox-id>', 'the sandbox')
    .argument('<command>', 'program to run (put -- before it when it takes options)')
    .argument('[args...]', 'its arguments')
    .option('-u, --user <name>', 'user to run as inside the sandbox', 'user')
    .option('--cwd <dir>', "working directory (default: the user's home)")
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', parseEnv, [])
    .option(
      '--timeout-ms <n>',
      'kill the command after this long',
      parsePositive('--timeout-ms', true),
    )
    .addOption(
      new Option('-i, --interactive', 'forward stdin (the default when stdin is not a terminal)'),
    )
    .action(async (sandboxId: string, cmd: string, args: string[], flags: ExecFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const sandbox = await runningSandbox(client, sandboxId)
        return exec(client.envd(sandbox), cmd, args, flags)
      })
    })
}

/** Runs the command; resolves to the exit code the CLI should end with. */
async function exec(
  envd: EnvdClient,
  cmd: string,
  args: string[],
  flags: ExecFlags,
): Promise<number> {
  const interrupts = listenForInterrupts()
  const forwardStdin = flags.interactive === true || !process.stdin.isTTY
  try {
    const result = await runCommand(envd, {
      cmd,
      args,
      envs: pairsToRecord(flags.env),
      user: flags.user,
      ...(flags.cwd === undefined ? {} : { cwd: flags.cwd }),
      ...(forwardStdin ? { stdin: readStdin() } : {}),
      ...(flags.timeoutMs === undefined ? {} : { timeoutMs: flags.timeoutMs }),
      signal: interrupts.signal,
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
    })
    return commandExitCode(cmd, result, {
      timedOut: result.timedOut,
      timeoutMs: flags.timeoutMs,
      interrupted: interrupts.interrupted(),
    })
  } catch (err) {
    // A sandbox that vanished mid-call is not a missing command.
    return failureExitCode(err, cmd, !(err instanceof SandboxNotFoundError))
  } finally {
    interrupts.dispose()
    process.stdin.destroy()
    envd.close()
  }
}
