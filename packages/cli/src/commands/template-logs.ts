/** `sandcell template logs NAME[:TAG]|BUILD_ID`: a build's log, each line with its step. */
import { Command } from 'commander'
import { exitBuildFailed } from '../command-exit.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'
import { createBuildTracker, describeBuildFailure, formatLogLine } from '../template-format.js'
import { resolveBuild } from '../template-refs.js'

interface LogsFlags extends ServerFlags {
  follow?: boolean
}

export function templateLogsCommand(context: CommandContext): Command {
  return withServerOptions(new Command('logs'))
    .description(
      "print a build's log: a template's newest build, the build a tag names, or a build id",
    )
    .argument('<build>', 'NAME (its newest build), NAME:TAG or BUILD_ID')
    .option('-f, --follow', 'keep printing until the build ends; exit 1 if it failed')
    .allowExcessArguments(false)
    .action(async (reference: string, flags: LogsFlags) => {
      process.exitCode = await withClient(context, flags, async (client) => {
        const { templateId, buildId } = await resolveBuild(client.templates, reference)
        const tracker = createBuildTracker()
        const end = await client.templates.readBuildLog(templateId, buildId, {
          follow: flags.follow === true,
          onLog: (line) => {
            tracker.observe(line)
            process.stdout.write(formatLogLine(line))
          },
        })
        if (flags.follow === true && end.status === 'error') {
          process.stderr.write(
            `sandcell: ${describeBuildFailure(reference, end.reason, tracker)}\n`,
          )
          return exitBuildFailed
        }
        return 0
      })
    })
}
