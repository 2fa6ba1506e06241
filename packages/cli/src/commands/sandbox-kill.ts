/** `sandcell sandbox kill ID…`: ends sandboxes; reports each, exits 125 when any failed. */
import { Command } from 'commander'
import { errorMessage } from '@sandcell/shared'
import { exitSandcellFailed } from '../command-exit.js'
import {
  describeFailure,
  withClient,
  withServerOptions,
  type CommandContext,
  type ServerFlags,
} from '../remote.js'
import { printJson } from '../sandbox-format.js'

interface KillFlags extends ServerFlags {
  json?: boolean
}

interface KillOutcome {
  sandboxId: string
  killed: boolean
  error?: string
}

export function sandboxKillCommand(context: CommandContext): Command {
  return withServerOptions(new Command('kill'))
    .alias('rm')
    .description('kill sandboxes: their processes end and their files are gone')
    .argument('<sandbox-id...>', 'the sandboxes')
    .option('--json', 'print one JSON array of { sandboxId, killed, error? }')
    .action(async (sandboxIds: string[], flags: KillFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const settled = await Promise.allSettled(sandboxIds.map((id) => client.sandboxes.kill(id)))
        const outcomes = settled.map((result, i): KillOutcome => {
          const sandboxId = sandboxIds[i] as string
          return result.status === 'fulfilled'
            ? { sandboxId, killed: true }
            : { sandboxId, killed: false, error: errorMessage(result.reason) }
        })
        if (flags.json === true) {
          printJson(outcomes)
        }
        settled.forEach((result, i) => {
          if (result.status === 'rejected') {
            const apiKeyGiven = (flags.apiKey ?? context.config().apiKey) !== undefined
            process.stderr.write(`sandcell: ${describeFailure(result.reason, apiKeyGiven)}\n`)
          } else if (flags.json !== true) {
            process.stdout.write(`killed ${sandboxIds[i]}\n`)
          }
        })
        return outcomes.every((outcome) => outcome.killed) ? 0 : exitSandcellFailed
      })
    })
}
