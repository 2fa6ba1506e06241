/**
 * `sandcell templates [list|build NAME]`: the built-in templates on this machine (base, debian),
 * and building them; templates built from Dockerfiles on a server are `sandcell template`.
 */
import { Command } from 'commander'
import type { Logger } from '@sandcell/shared'
import type { CliConfig } from '../config.js'
import { prepareWithProgress } from '../progress-bar.js'

/** The local driver, loaded on use: the CLI's other commands start without the runtime. */
async function localDriver(config: Readonly<CliConfig>, log: Logger) {
  const { createLocalDriver } = await import('../local-runtime.js')
  return createLocalDriver(config, log)
}

export function templatesCommand(context: {
  config: () => Readonly<CliConfig>
  log: () => Logger
}): Command {
  const command = new Command('templates')
    .summary('the built-in templates base and debian on this machine (yours: `sandcell template`)')
    .description(
      'list and build the built-in templates (base, debian) on this machine; templates you build from Dockerfiles on a server are `sandcell template`',
    )
  command
    .command('list', { isDefault: true })
    .description('list the built-in templates and whether they are built')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const driver = await localDriver(context.config(), context.log())
      const templates = await driver.templates()
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(templates, null, 2)}\n`)
        return
      }
      for (const t of templates) {
        process.stdout.write(
          `${t.name.padEnd(10)} ${(t.ready ? 'ready' : 'not built').padEnd(10)} ${t.description}\n`,
        )
      }
    })
  command
    .command('build <name>')
    .description('build a built-in template now (otherwise it is built on first use)')
    .action(async (name: string) => {
      const driver = await localDriver(context.config(), context.log())
      await prepareWithProgress(driver, name)
      process.stdout.write(`template ${name} ready\n`)
    })
  return command
}
