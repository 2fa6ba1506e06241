/** `sandcell sandbox list`: the server's sandboxes, filtered by state and metadata. */
import { Command } from 'commander'
import type { ListedSandbox } from '@sandcell/sdk'
import { pairsToRecord, parseMetadata, parseState, type StateFilter } from '../arguments.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { formatSandboxTable, printJson, sandboxJson } from '../sandbox-format.js'

interface ListFlags extends ServerFlags {
  state: StateFilter[]
  metadata: string[]
  json?: boolean
}

export function sandboxListCommand(context: CommandContext): Command {
  return withServerOptions(new Command('list'))
    .alias('ls')
    .description('list sandboxes (running and paused unless --state says which)')
    .option('--state <state>', 'running or paused (repeatable)', parseState, [])
    .option(
      '--metadata <KEY=VALUE>',
      'only sandboxes with this metadata (repeatable)',
      parseMetadata,
      [],
    )
    .option('--json', 'print the sandboxes as a JSON array')
    .allowExcessArguments(false)
    .action(async (flags: ListFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const sandboxes: ListedSandbox[] = []
        for await (const sandbox of client.sandboxes.list({
          state: flags.state,
          metadata: pairsToRecord(flags.metadata),
        })) {
          sandboxes.push(sandbox)
        }
        if (flags.json === true) {
          printJson(sandboxes.map(sandboxJson))
          return
        }
        process.stdout.write(formatSandboxTable(sandboxes, new Date()))
      })
    })
}
