/**
 * What every command that talks to a sandcell server shares: the `--server`/`--api-key` flags
 * over the config, one client per command, and failures as `sandcell: <message>` with exit 125.
 */
import type { Command } from 'commander'
import { createSandcellClient, type SandboxDetail, type SandcellClient } from '@sandcell/sdk'
import {
  FailedPreconditionError,
  UnauthenticatedError,
  UnavailableError,
  errorMessage,
  type Logger,
} from '@sandcell/shared'
import { exitSandcellFailed } from './command-exit.js'
import type { CliConfig } from './config.js'

export interface CommandContext {
  config: () => Readonly<CliConfig>
  log: () => Logger
}

export interface ServerFlags {
  server?: string
  apiKey?: string
}

/** Adds `--server` and `--api-key`, which win over the config file and `SANDCELL_*`. */
export function withServerOptions(command: Command): Command {
  return command
    .option(
      '--server <url>',
      'sandcell server URL (SANDCELL_SERVER_URL; default http://127.0.0.1:3000)',
    )
    .option('--api-key <key>', "the server's API key (SANDCELL_API_KEY)")
}

/** The failure line for a server command, with what to change where sandcell knows it. */
export function describeFailure(err: unknown, apiKeyGiven: boolean): string {
  const message = errorMessage(err)
  if (err instanceof UnauthenticatedError) {
    return apiKeyGiven
      ? `${message}; check the key given by SANDCELL_API_KEY or --api-key`
      : `${message}; no API key was given: set SANDCELL_API_KEY or pass --api-key`
  }
  if (err instanceof UnavailableError && err.details?.status === undefined) {
    return `${message}; is the server running? Point to it with SANDCELL_SERVER_URL or --server`
  }
  return message
}

/**
 * Runs `action` with a client for the configured server and closes it after. Resolves to the
 * exit code: the action's (0 when it returns nothing), or 125 after printing a failure.
 */
export async function withClient(
  context: CommandContext,
  flags: ServerFlags,
  action: (client: SandcellClient) => Promise<number | void>,
): Promise<number> {
  let apiKey: string | undefined
  let client: SandcellClient | undefined
  try {
    const config = context.config()
    apiKey = flags.apiKey ?? config.apiKey
    client = createSandcellClient({ apiUrl: flags.server ?? config.serverUrl, apiKey })
    context.log().debug({ server: client.apiUrl }, 'talking to the server')
    return (await action(client)) ?? 0
  } catch (err) {
    process.stderr.write(`sandcell: ${describeFailure(err, apiKey !== undefined)}\n`)
    return exitSandcellFailed
  } finally {
    await client?.close()
  }
}

/**
 * The sandbox, which must be running for its envd to answer.
 * @throws SandboxNotFoundError, FailedPreconditionError (paused) naming the command to resume it.
 */
export async function runningSandbox(
  client: SandcellClient,
  sandboxId: string,
): Promise<SandboxDetail> {
  const sandbox = await client.sandboxes.get(sandboxId)
  if (sandbox.state !== 'running') {
    throw new FailedPreconditionError(
      `sandbox ${sandboxId} is ${sandbox.state}; resume it with: sandcell sandbox resume ${sandboxId}`,
    )
  }
  return sandbox
}
