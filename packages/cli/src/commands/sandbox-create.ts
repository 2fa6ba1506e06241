/** `sandcell sandbox create`: starts a sandbox on the server and prints its id. */
import { Command, Option } from 'commander'
import { pairsToRecord, parseEnv, parseMetadata, parsePositive } from '../arguments.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { printJson, sandboxJson } from '../sandbox-format.js'

interface CreateFlags extends ServerFlags {
  template?: string
  driver?: string
  timeout?: number
  metadata: string[]
  env: string[]
  json?: boolean
}

export function sandboxCreateCommand(context: CommandContext): Command {
  return withServerOptions(new Command('create'))
    .description('start a sandbox on the server and print its id')
    .option('--template <name>', 'template id or alias (default: the defaultTemplate setting)')
    .addOption(
      new Option(
        '--driver <kind>',
        "isolation (sent as metadata sandcell.driver); default: the template's on the server",
      ).choices(['container', 'qemu', 'firecracker']),
    )
    .option(
      '--timeout <seconds>',
      "lifetime in seconds before it is killed (default: the server's, 300)",
      parsePositive('--timeout', true),
    )
    .option('--metadata <KEY=VALUE>', 'metadata to find it by (repeatable)', parseMetadata, [])
    .option(
      '-e, --env <KEY=VALUE>',
      'environment variable of its processes (repeatable)',
      parseEnv,
      [],
    )
    .option('--json', 'print the sandbox as JSON')
    .allowExcessArguments(false)
    .action(async (flags: CreateFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const created = await client.sandboxes.create({
          templateId: flags.template ?? context.config().defaultTemplate,
          ...(flags.timeout === undefined ? {} : { timeoutMs: flags.timeout * 1000 }),
          metadata: {
            ...pairsToRecord(flags.metadata),
            ...(flags.driver === undefined ? {} : { 'sandcell.driver': flags.driver }),
          },
          envVars: pairsToRecord(flags.env),
        })
        if (flags.json === true) {
          printJson(sandboxJson(await client.sandboxes.get(created.sandboxId)))
          return
        }
        process.stdout.write(`${created.sandboxId}\n`)
      })
    })
}
