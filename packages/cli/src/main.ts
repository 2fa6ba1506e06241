/** The `sandcell` command line: one commander program, one file per command under commands/. */
import { Command, Option } from 'commander'
import { createLogger, errorMessage, type Logger } from '@sandcell/shared'
import { loadCliConfig, type CliConfig } from './config.js'
import { exitSandcellFailed } from './command-exit.js'
import { sandboxCreateCommand } from './commands/sandbox-create.js'
import { sandboxExecCommand } from './commands/sandbox-exec.js'
import { sandboxGetCommand } from './commands/sandbox-get.js'
import { sandboxKillCommand } from './commands/sandbox-kill.js'
import { sandboxListCommand } from './commands/sandbox-list.js'
import { sandboxPauseCommand } from './commands/sandbox-pause.js'
import { sandboxResumeCommand } from './commands/sandbox-resume.js'
import { sandboxRunCommand } from './commands/sandbox-run.js'
import { sandboxShellCommand } from './commands/sandbox-shell.js'
import { serveCommand } from './commands/serve.js'
import { templatesCommand } from './commands/templates.js'
import { templateBuildCommand } from './commands/template-build.js'
import { templateListCommand } from './commands/template-list.js'
import { templateLogsCommand } from './commands/template-logs.js'
import { templateRmCommand } from './commands/template-rm.js'
import { languagesCommand } from './commands/languages.js'
import { runLanguageCommand } from './commands/run.js'

interface GlobalFlags {
  config?: string
  dataDir?: string
  logLevel?: string
}

export function buildProgram(
  env: Record<string, string | undefined>,
  argv: readonly string[] = [],
): Command {
  let config: Readonly<CliConfig> | undefined
  let log: Logger | undefined
  const program = new Command('sandcell')
    .description('run untrusted code in sandboxes: containers and microVMs behind one API')
    .addOption(new Option('--config <file>', 'YAML config file').env('SANDCELL_CONFIG'))
    .option('--data-dir <dir>', 'where templates, disks and sandboxes live')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .showHelpAfterError()
    // `sandbox run` passes everything after its command through untouched (like docker run).
    .enablePositionalOptions()
  const context = {
    config: (): Readonly<CliConfig> => {
      const flags = program.opts<GlobalFlags>()
      config ??= loadCliConfig({
        file: flags.config,
        env,
        flags: { dataDir: flags.dataDir, logLevel: flags.logLevel },
      })
      return config
    },
    log: (): Logger => {
      log ??= createLogger({ level: context.config().logLevel, name: 'sandcell' })
      return log
    },
  }
  const sandbox = new Command('sandbox')
    .description('create and use sandboxes')
    .enablePositionalOptions()
  sandbox.addCommand(sandboxRunCommand(context))
  sandbox.addCommand(sandboxCreateCommand(context))
  sandbox.addCommand(sandboxListCommand(context))
  sandbox.addCommand(sandboxGetCommand(context))
  sandbox.addCommand(sandboxExecCommand(context))
  sandbox.addCommand(sandboxShellCommand(context))
  sandbox.addCommand(sandboxPauseCommand(context))
  sandbox.addCommand(sandboxResumeCommand(context))
  sandbox.addCommand(sandboxKillCommand(context))
  program.addCommand(sandbox)
  const template = new Command('template')
    .summary('your templates, built from Dockerfiles on a server (built-ins: `sandcell templates`)')
    .description(
      'build your own templates from Dockerfiles on a sandcell server (E2B template builds), list and delete them and read their build logs; the built-in base and debian templates are `sandcell templates`',
    )
  template.addCommand(templateBuildCommand(context))
  template.addCommand(templateListCommand(context))
  template.addCommand(templateLogsCommand(context))
  template.addCommand(templateRmCommand(context))
  program.addCommand(template)
  program.addCommand(templatesCommand(context))
  program.addCommand(runLanguageCommand({ ...context, argv }))
  program.addCommand(languagesCommand(context))
  program.addCommand(serveCommand({ env, globals: () => program.opts<GlobalFlags>() }))
  return program
}

export async function main(argv: string[], env: Record<string, string | undefined>): Promise<void> {
  try {
    await buildProgram(env, argv).parseAsync(argv)
  } catch (err) {
    process.stderr.write(`sandcell: ${errorMessage(err)}\n`)
    process.exitCode = exitSandcellFailed
  }
}
