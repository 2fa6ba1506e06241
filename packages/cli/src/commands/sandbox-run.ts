/**
 * `sandcell sandbox run`: a fresh sandbox, one command streamed through the agent, the command's
 * exit code, and the sandbox destroyed — like `docker run --rm`, in milliseconds.
 */
import { Command, Option } from 'commander'
import { runCommand } from '@sandcell/envd-client'
import type { Sandbox, SandboxLimits } from '@sandcell/runtime'
import { driverKinds, type DriverKind } from '@sandcell/runtime/config'
import { errorMessage, type Logger } from '@sandcell/shared'
import { collectList, pairsToRecord, parseEnv, parsePositive } from '../arguments.js'
import {
  commandExitCode,
  failureExitCode,
  listenForInterrupts,
  readStdin,
} from '../command-exit.js'
import type { CliConfig } from '../config.js'
import { prepareWithProgress } from '../progress-bar.js'

export interface SandboxRunFlags {
  template?: string
  driver?: DriverKind
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
  net?: boolean
  allowOut: string[]
  denyOut: string[]
}

export function sandboxRunCommand(context: {
  config: () => Readonly<CliConfig>
  log: () => Logger
}): Command {
  return new Command('run')
    .description('run a command in a fresh sandbox, streaming its output, then destroy the sandbox')
    .option('--template <name>', 'template to start from (base, debian)')
    .addOption(
      new Option(
        '--driver <kind>',
        "isolation: container, or a microVM (qemu, firecracker); default: the template's, else the configured one",
      ).choices(driverKinds),
    )
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
    .option(
      '--net',
      'give the sandbox a network of its own (NAT to the internet, DNS); default: loopback only',
    )
    .option(
      '--allow-out <entry>',
      'with --net: address, block or domain always reachable; repeatable, commas allowed',
      collectList,
      [],
    )
    .option(
      '--deny-out <cidr>',
      'with --net: address or block refused unless allowed (0.0.0.0/0: all); repeatable',
      collectList,
      [],
    )
    .argument('<command>', 'program to run')
    .argument('[args...]', 'its arguments')
    .allowExcessArguments(false)
    .passThroughOptions()
    .action(async (cmd: string, args: string[], flags: SandboxRunFlags) => {
      process.exitCode = await sandboxRun(context.config(), context.log(), cmd, args, flags)
    })
}

/** Runs the command; resolves to the exit code the CLI should end with. */
export async function sandboxRun(
  config: Readonly<CliConfig>,
  log: Logger,
  cmd: string,
  args: string[],
  flags: SandboxRunFlags,
): Promise<number> {
  // Loaded here, not on top: the CLI's other commands start without the runtime.
  const [{ egressPolicyFromE2b }, { createLocalDrivers, ownerLabels, reapOrphans }] =
    await Promise.all([import('@sandcell/network'), import('../local-runtime.js')])
  const net = flags.net === true || flags.allowOut.length > 0 || flags.denyOut.length > 0
  // Validated before anything starts: a bad rule is the caller's mistake (exit 125).
  let egress
  try {
    egress = net
      ? egressPolicyFromE2b({ allowOut: flags.allowOut, denyOut: flags.denyOut })
      : undefined
  } catch (err) {
    return failureExitCode(err, cmd, false)
  }
  const drivers = createLocalDrivers(
    { ...config, network: { ...config.network, enabled: net } },
    log,
  )
  const template = flags.template ?? config.defaultTemplate
  const limits: SandboxLimits = {
    memoryMiB: flags.memoryMb ?? config.limits.memoryMiB,
    cpus: flags.cpus ?? config.limits.cpus,
    pids: flags.pids ?? config.limits.pids,
    diskMiB: flags.diskMb ?? config.limits.diskMiB,
  }
  let sandbox: Sandbox | undefined
  const interrupts = listenForInterrupts()
  try {
    await reapOrphans(drivers, log)
    const chosen = { template, ...(flags.driver === undefined ? {} : { driver: flags.driver }) }
    // The template is built for the driver that will run it (a microVM needs its images too).
    await prepareWithProgress(drivers.driverFor(chosen), template, interrupts.signal)
    sandbox = await drivers.create(
      { ...chosen, limits, labels: ownerLabels(), ...(egress === undefined ? {} : { egress }) },
      { signal: interrupts.signal },
    )
    const envs = pairsToRecord(flags.env)
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
      signal: interrupts.signal,
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
    })
    // Only a killed command needs to know whether the memory limit did it.
    const oomKilled = result.outcome.signal !== null && (await sandbox.stats()).oomKills > oomBefore
    return commandExitCode(cmd, result, {
      timedOut: result.timedOut,
      timeoutMs: flags.timeoutMs,
      oomKilled,
      memoryMiB: limits.memoryMiB,
      interrupted: interrupts.interrupted(),
    })
  } catch (err) {
    return failureExitCode(err, cmd, sandbox !== undefined)
  } finally {
    interrupts.dispose()
    if (process.stdin.isTTY) {
      process.stdin.setRawMode(false)
    }
    process.stdin.destroy()
    await sandbox?.destroy({ reason: 'command finished' }).catch((err: unknown) => {
      process.stderr.write(`sandcell: could not remove the sandbox: ${errorMessage(err)}\n`)
    })
    await drivers.close()
  }
}
