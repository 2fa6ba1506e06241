/** `sandcell templates [list|build NAME]`: what sandboxes can start from, and building them. */
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
  const command = new Command('templates').description('list and build sandbox templates')
  command
    .command('list', { isDefault: true })
    .description('list templates and whether they are built')
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
    .description('build a template now (otherwise it is built on first use)')
    .action(async (name: string) => {
      const driver = await localDriver(context.config(), context.log())
      await prepareWithProgress(driver, name)
      process.stdout.write(`template ${name} ready\n`)
    })
  return command
}
