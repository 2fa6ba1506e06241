/**
 * `sandcell languages`: the languages runs support, where each runs, at which version, and why
 * one is unavailable; from a server (`GET /languages`) or `--local` (probing the templates).
 */
import { Command } from 'commander'
import type { LanguageInfo } from '@sandcell/sdk'
import { errorMessage } from '@sandcell/shared'
import { exitSandcellFailed } from '../command-exit.js'
import type { LocalRuns } from '../local-run.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'

interface LanguagesFlags extends ServerFlags {
  json?: boolean
  local?: boolean
}

/** The table `sandcell languages` prints. */
export function formatLanguages(languages: readonly LanguageInfo[]): string {
  const rows = [
    ['LANGUAGE', 'VERSION', 'TEMPLATE', 'ALIASES', 'STATUS'],
    ...languages.map((l) => [
      l.language,
      l.version ?? '-',
      l.template ?? '-',
      l.aliases.join(',') || '-',
      l.available ? 'available' : `unavailable: ${l.reason ?? 'unknown'}`,
    ]),
  ]
  const widths =
    rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? []
  return rows
    .map((row) =>
      row
        .map((cell, column) =>
          column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0),
        )
        .join('  '),
    )
    .join('\n')
    .concat('\n')
}

export function languagesCommand(context: CommandContext): Command {
  return withServerOptions(new Command('languages'))
    .description(
      'list the languages `sandcell run` and the run APIs support, and why any cannot run',
    )
    .option('--json', 'machine-readable output')
    .option('--local', "probe this machine's templates instead of asking a server")
    .action(async (flags: LanguagesFlags) => {
      const print = (languages: LanguageInfo[]): void => {
        process.stdout.write(
          flags.json === true
            ? `${JSON.stringify(languages, null, 2)}\n`
            : formatLanguages(languages),
        )
      }
      if (flags.local !== true) {
        process.exitCode = await withClient(context, flags, async (client) => {
          print(await client.run.languages())
        })
        return
      }
      let local: LocalRuns | undefined
      try {
        // Loaded on use: the CLI's other commands start without the runtime.
        const { openLocalRuns } = await import('../local-run.js')
        local = await openLocalRuns(context.config(), context.log(), { buildTemplates: false })
        const statuses = await local.runs.catalog.statuses()
        print(
          statuses.map((s) => ({
            language: s.name,
            version: s.version ?? null,
            aliases: [...s.aliases],
            runtime: s.runtime ?? null,
            template: s.template ?? null,
            compiled: s.compiled,
            available: s.available,
            reason: s.reason ?? null,
          })),
        )
      } catch (err) {
        process.stderr.write(`sandcell: ${errorMessage(err)}\n`)
        process.exitCode = exitSandcellFailed
      } finally {
        await local?.close()
      }
    })
}
