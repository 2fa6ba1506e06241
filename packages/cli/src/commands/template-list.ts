/** `sandcell template list`: the server's built templates, each with its current build. */
import { Command } from 'commander'
import type { TemplatesApi } from '@sandcell/sdk'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { printJson } from '../sandbox-format.js'
import { formatTemplateTable, type TemplateRow } from '../template-format.js'

interface ListFlags extends ServerFlags {
  json?: boolean
}

/** Every template with when its current build was made and its newest build (one GET each). */
async function templateRows(templates: TemplatesApi): Promise<TemplateRow[]> {
  const summaries = await templates.list()
  return Promise.all(
    summaries.map(async (summary): Promise<TemplateRow> => {
      const { builds, ...detail } = await templates.get(summary.templateId)
      const current = builds.find((build) => build.buildId === detail.buildId)
      const newest = builds.at(-1)
      return {
        ...detail,
        ...(current?.status !== 'ready' || current.finishedAt === undefined
          ? {}
          : { builtAt: current.finishedAt }),
        ...(newest === undefined
          ? {}
          : { latestBuild: { buildId: newest.buildId, status: newest.status } }),
      }
    }),
  )
}

export function templateListCommand(context: CommandContext): Command {
  return withServerOptions(new Command('list'))
    .alias('ls')
    .description('list built templates: name, id, status of the current build, builds, when built')
    .option('--json', 'print the templates as a JSON array')
    .allowExcessArguments(false)
    .action(async (flags: ListFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const rows = await templateRows(client.templates)
        if (flags.json === true) {
          printJson(rows)
          return
        }
        process.stdout.write(formatTemplateTable(rows, new Date()))
      })
    })
}
