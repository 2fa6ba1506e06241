/** `sandcell sandbox get ID`: everything the server says about one sandbox. */
import { Command } from 'commander'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { formatSandboxDetail, printJson, sandboxJson } from '../sandbox-format.js'

interface GetFlags extends ServerFlags {
  json?: boolean
}

export function sandboxGetCommand(context: CommandContext): Command {
  return withServerOptions(new Command('get'))
    .description("show a sandbox's state, lifetime, resources and metadata")
    .argument('<sandbox-id>', 'the sandbox')
    .option('--json', 'print the sandbox as JSON')
    .allowExcessArguments(false)
    .action(async (sandboxId: string, flags: GetFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const sandbox = await client.sandboxes.get(sandboxId)
        if (flags.json === true) {
          printJson(sandboxJson(sandbox))
          return
        }
        process.stdout.write(formatSandboxDetail(sandbox, new Date()))
      })
    })
}
