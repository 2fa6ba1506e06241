/**
 * `sandcell sandbox shell ID`: an interactive shell in a sandbox on a pseudo-terminal. The local
 * terminal goes raw while it runs, follows window resizes (SIGWINCH → the Update RPC) and is
 * restored on every way out; the CLI exits with the shell's code. Without a terminal (piped
 * input) the shell runs that input as a script, like `docker exec -i`.
 */
import { Command } from 'commander'
import { runCommand, type EnvdClient } from '@sandcell/envd-client'
import { Signal, fromConnectError, parseExitStatus, shellExitCode } from '@sandcell/protocol'
import { UnavailableError, errorMessage, type Logger } from '@sandcell/shared'
import { commandExitCode, listenForInterrupts, readStdin } from '../command-exit.js'
import {
  runningSandbox,
  withClient,
  withServerOptions,
  type CommandContext,
  type ServerFlags,
} from '../remote.js'

interface ShellFlags extends ServerFlags {
  user: string
}

/** bash as a login shell where the template has it, else sh. */
const shellScript = 'if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l'

export function sandboxShellCommand(context: CommandContext): Command {
  return withServerOptions(new Command('shell'))
    .description('open an interactive shell in a sandbox (piped input runs as a script)')
    .argument('<sandbox-id>', 'the sandbox')
    .option('-u, --user <name>', 'user to log in as inside the sandbox', 'user')
    .allowExcessArguments(false)
    .action(async (sandboxId: string, flags: ShellFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const sandbox = await runningSandbox(client, sandboxId)
        const envd = client.envd(sandbox, { user: flags.user })
        try {
          return process.stdin.isTTY
            ? await terminalShell(envd, context.log())
            : await pipedShell(envd, flags.user)
        } finally {
          process.stdin.destroy()
          envd.close()
        }
      })
    })
}

/** The local terminal's size, or the classic 80x24 when output is not a terminal. */
function terminalSize(): { cols: number; rows: number } {
  const stdout = process.stdout
  return stdout.isTTY
    ? { cols: stdout.columns || 80, rows: stdout.rows || 24 }
    : { cols: 80, rows: 24 }
}

/** The shell reading piped input as its script, output kept apart; resolves to its exit code. */
async function pipedShell(envd: EnvdClient, user: string): Promise<number> {
  const interrupts = listenForInterrupts()
  try {
    const result = await runCommand(envd, {
      cmd: '/bin/sh',
      args: ['-c', shellScript],
      user,
      stdin: readStdin(),
      signal: interrupts.signal,
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
    })
    return commandExitCode('shell', result, {
      timedOut: false,
      interrupted: interrupts.interrupted(),
    })
  } finally {
    interrupts.dispose()
  }
}

/**
 * The shell on a pseudo-terminal sized like ours, our terminal raw meanwhile; resolves to its
 * exit code. @throws SandcellError when it cannot start.
 */
async function terminalShell(envd: EnvdClient, log: Logger): Promise<number> {
  const stdin = process.stdin
  const stream = new AbortController()
  let pid: number | undefined
  let ended = false
  // Keystrokes are sent one RPC at a time, in order.
  let input: Promise<void> = Promise.resolve()
  const selector = (): { selector: { case: 'pid'; value: number } } => ({
    selector: { case: 'pid', value: pid ?? 0 },
  })
  const send = (chunk: Uint8Array): void => {
    input = input
      .then(async () => {
        await envd.process.sendInput({
          process: selector(),
          input: { input: { case: 'pty', value: chunk } },
        })
      })
      // Input racing the shell's exit is lost on purpose; anything else shows in debug logs.
      .catch((err: unknown) => {
        if (!ended) {
          log.debug({ err: errorMessage(err) }, 'terminal input not delivered')
        }
      })
  }
  const onData = (chunk: Buffer): void => send(chunk)
  const onResize = (): void => {
    envd.process
      .update({ process: selector(), pty: { size: terminalSize() } })
      // A resize racing the shell's exit changes nothing; it must not end the CLI.
      .catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'terminal resize failed'))
  }
  const onSignal = (): void => stream.abort(new Error('interrupted'))
  const restore = (): void => {
    if (stdin.isRaw) {
      stdin.setRawMode(false)
    }
  }
  // In raw mode Ctrl-C is a byte for the shell; SIGINT can only come from outside.
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)
  // Also on exit paths that skip `finally` (process.exit elsewhere).
  process.on('exit', restore)
  try {
    const events = envd.process.start(
      {
        process: { cmd: '/bin/sh', args: ['-c', shellScript], envs: {} },
        pty: { size: terminalSize() },
      },
      { signal: stream.signal },
    )
    for await (const { event } of events) {
      switch (event?.event.case) {
        case 'start':
          pid = event.event.value.pid
          stdin.setRawMode(true)
          stdin.on('data', onData)
          process.stdout.on('resize', onResize)
          break
        case 'data': {
          const output = event.event.value.output
          if (output.case === 'pty' || output.case === 'stdout') {
            process.stdout.write(output.value)
          } else if (output.case === 'stderr') {
            process.stderr.write(output.value)
          }
          break
        }
        case 'end': {
          ended = true
          const { status, exitCode } = event.event.value
          return shellExitCode(parseExitStatus(status, exitCode))
        }
        case 'keepalive':
        case undefined:
          break
      }
    }
    throw new UnavailableError('the shell stream ended without an exit status')
  } catch (err) {
    throw fromConnectError(err)
  } finally {
    restore()
    process.off('exit', restore)
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    process.off('SIGHUP', onSignal)
    stdin.off('data', onData)
    process.stdout.off('resize', onResize)
    stream.abort()
    if (!ended && pid !== undefined) {
      // Leaving early (a signal, a broken stream) must not leave the shell running unattended.
      await envd.process
        .sendSignal(
          { process: selector(), signal: Signal.SIGKILL },
          { signal: AbortSignal.timeout(2000) },
        )
        .catch(() => undefined)
    }
  }
}
