/** The CLI's configuration: the runtime's settings plus how the CLI itself talks and logs. */
import { z } from 'zod'
// The schemas alone: every command reads the config, the remote ones without the runtime.
import { runtimeConfigSchema } from '@sandcell/runtime/config'
import { runConfigSchema } from '@sandcell/runs/config'
import { loadConfig } from '@sandcell/shared'

export const cliConfigSchema = runtimeConfigSchema.extend({
  logLevel: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('warn')
    .describe('log level of the CLI (logs go to stderr); SANDCELL_LOG_LEVEL, --log-level'),
  serverUrl: z
    .url({ protocol: /^https?$/, error: 'an http:// or https:// URL' })
    .default('http://127.0.0.1:3000')
    .describe(
      'sandcell server the sandbox commands talk to (default http://127.0.0.1:3000); SANDCELL_SERVER_URL, --server',
    ),
  apiKey: z
    .string()
    .min(1)
    .optional()
    .describe("the server's API key, sent as X-API-KEY; SANDCELL_API_KEY, --api-key"),
  languagesFile: z
    .string()
    .optional()
    .describe(
      'languages of `run --local` and `languages --local` (default: the shipped languages.yaml); SANDCELL_LANGUAGES_FILE',
    ),
  run: runConfigSchema.prefault({}).describe('limits of `run --local`, as the server has them'),
})

export type CliConfig = z.output<typeof cliConfigSchema>

export interface CliConfigSources {
  file?: string | undefined
  env: Record<string, string | undefined>
  flags: Record<string, unknown>
}

export function loadCliConfig(sources: CliConfigSources): Readonly<CliConfig> {
  return loadConfig({ schema: cliConfigSchema, ...sources })
}
