/** `sandcell sandbox resume ID`: resumes a paused sandbox (a running one gets its lifetime extended). */
import { Command } from 'commander'
import { parsePositive } from '../arguments.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { formatEndsIn, printJson, sandboxJson } from '../sandbox-format.js'

interface ResumeFlags extends ServerFlags {
  timeout?: number
  json?: boolean
}

export function sandboxResumeCommand(context: CommandContext): Command {
  return withServerOptions(new Command('resume'))
    .description('resume a paused sandbox')
    .argument('<sandbox-id>', 'the sandbox')
    .option(
      '--timeout <seconds>',
      'keep it alive at least this long from now, seconds (default 300)',
      parsePositive('--timeout', true),
    )
    .option('--json', 'print the sandbox as JSON, with "resumed": true when it was paused')
    .allowExcessArguments(false)
    .action(async (sandboxId: string, flags: ResumeFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const connected = await client.sandboxes.connect(sandboxId, {
          ...(flags.timeout === undefined ? {} : { timeoutMs: flags.timeout * 1000 }),
        })
        const sandbox = await client.sandboxes.get(sandboxId)
        if (flags.json === true) {
          printJson({ ...sandboxJson(sandbox), resumed: connected.resumed })
          return
        }
        const endsIn = formatEndsIn(sandbox, new Date())
        process.stdout.write(
          connected.resumed
            ? `resumed ${sandboxId} (ends in ${endsIn})\n`
            : `${sandboxId} was running (ends in ${endsIn})\n`,
        )
      })
    })
}
