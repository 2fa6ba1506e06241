/** `sandcell sandbox create`: starts a sandbox on the server and prints its id. */
import { Command, Option } from 'commander'
import { collectList, pairsToRecord, parseEnv, parseMetadata, parsePositive } from '../arguments.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { printJson, sandboxJson } from '../sandbox-format.js'
import { driverKinds } from '@sandcell/runtime/config'

interface CreateFlags extends ServerFlags {
  template?: string
  driver?: string
  timeout?: number
  metadata: string[]
  env: string[]
  /** False with --no-internet. */
  internet: boolean
  allowOut: string[]
  denyOut: string[]
  /** False with --no-public-traffic. */
  publicTraffic: boolean
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
      ).choices(driverKinds),
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
    .option(
      '--no-internet',
      'no outbound network (E2B allowInternetAccess: false); --allow-out still opens holes',
    )
    .option(
      '--allow-out <entry>',
      'address, block or domain (example.com, *.example.com) always reachable; repeatable, commas allowed',
      collectList,
      [],
    )
    .option(
      '--deny-out <cidr>',
      'address or block refused unless allowed (0.0.0.0/0: all); repeatable, commas allowed',
      collectList,
      [],
    )
    .option(
      '--no-public-traffic',
      'its ports need the traffic access token (header e2b-traffic-access-token, shown by --json)',
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
          ...(flags.internet ? {} : { allowInternetAccess: false }),
          ...(flags.allowOut.length === 0 && flags.denyOut.length === 0 && flags.publicTraffic
            ? {}
            : {
                network: {
                  ...(flags.allowOut.length === 0 ? {} : { allowOut: flags.allowOut }),
                  ...(flags.denyOut.length === 0 ? {} : { denyOut: flags.denyOut }),
                  ...(flags.publicTraffic ? {} : { allowPublicTraffic: false }),
                },
              }),
        })
        if (flags.json === true) {
          printJson({
            ...sandboxJson(await client.sandboxes.get(created.sandboxId)),
            ...(created.trafficAccessToken === undefined
              ? {}
              : { trafficAccessToken: created.trafficAccessToken }),
          })
          return
        }
        process.stdout.write(`${created.sandboxId}\n`)
      })
    })
}
