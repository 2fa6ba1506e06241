/** `sandcell template rm NAME`: deletes a built template with all its builds. */
import { Command } from 'commander'
import { InvalidArgumentError } from '@sandcell/shared'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { resolveTemplateId } from '../template-refs.js'

export function templateRmCommand(context: CommandContext): Command {
  return withServerOptions(new Command('rm'))
    .alias('delete')
    .description(
      'delete a built template and all its builds (sandboxes running from it keep running)',
    )
    .argument('<name>', 'the template: its name or id')
    .allowExcessArguments(false)
    .action(async (name: string, flags: ServerFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        if (name.includes(':')) {
          throw new InvalidArgumentError(
            `template rm deletes a whole template: give its name without a tag, not ${JSON.stringify(name)}`,
          )
        }
        const templateId = await resolveTemplateId(client.templates, name)
        await client.templates.delete(templateId)
        process.stdout.write(`deleted template ${name} (${templateId})\n`)
      })
    })
}
