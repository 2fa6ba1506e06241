/** `sandcell sandbox pause ID`: stops a sandbox's clock and processes, keeping its files. */
import { Command } from 'commander'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { printJson } from '../sandbox-format.js'

interface PauseFlags extends ServerFlags {
  json?: boolean
}

export function sandboxPauseCommand(context: CommandContext): Command {
  return withServerOptions(new Command('pause'))
    .description('pause a sandbox; resume it later with: sandcell sandbox resume ID')
    .argument('<sandbox-id>', 'the sandbox')
    .option('--json', 'print { sandboxId, state } as JSON')
    .allowExcessArguments(false)
    .action(async (sandboxId: string, flags: PauseFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        await client.sandboxes.pause(sandboxId)
        if (flags.json === true) {
          printJson({ sandboxId, state: 'paused' })
          return
        }
        process.stdout.write(`paused ${sandboxId}\n`)
      })
    })
}
