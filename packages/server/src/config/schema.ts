/** The server's configuration: the sandbox runtime's settings plus the API's own. */
import { z } from 'zod'
import { buildsConfigSchema } from '@sandcell/builds'
import { imagesConfigSchema } from '@sandcell/images'
import { runConfigSchema } from '@sandcell/runs'
import { runtimeConfigSchema } from '@sandcell/runtime'

export const serverConfigSchema = runtimeConfigSchema.extend({
  host: z.string().default('127.0.0.1').describe('address to listen on; SANDCELL_HOST, --host'),
  port: z
    .number()
    .int()
    .min(0)
    .max(65535)
    .default(3000)
    .describe('port for the API and the sandbox proxy (0 = any free port); SANDCELL_PORT, --port'),
  logLevel: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('info')
    .describe('SANDCELL_LOG_LEVEL, --log-level'),
  apiKeys: z
    .array(z.string().min(16, 'an API key must be at least 16 characters'))
    .default([])
    .describe(
      'accepted API keys (X-API-KEY); when empty, one is generated on first start, stored hashed and printed once; SANDCELL_API_KEYS (comma-separated)',
    ),
  domain: z
    .string()
    .regex(/^[a-z0-9.-]+$/i, 'a domain name')
    .default('sandcell.local')
    .describe('domain of sandbox hosts (PORT-SANDBOXID.DOMAIN); SANDCELL_DOMAIN'),
  defaultTimeoutS: z
    .number()
    .int()
    .positive()
    .default(300)
    .describe(
      'lifetime of a sandbox created without a timeout, seconds; SANDCELL_DEFAULT_TIMEOUT_S',
    ),
  maxTimeoutS: z
    .number()
    .int()
    .positive()
    .default(86_400)
    .describe('longest timeout a client may ask for, seconds; SANDCELL_MAX_TIMEOUT_S'),
  warmPool: z
    .record(z.string(), z.number().int().min(0).max(1000))
    .default({ base: 2 })
    .describe('ready sandboxes kept per template (YAML only)'),
  drainTimeoutMs: z
    .number()
    .int()
    .positive()
    .default(10_000)
    .describe('on SIGTERM, how long requests in flight may finish, ms; SANDCELL_DRAIN_TIMEOUT_MS'),
  killSandboxesOnExit: z
    .boolean()
    .default(false)
    .describe(
      'destroy every sandbox when the server stops (default: leave them running for the next start to adopt); SANDCELL_KILL_SANDBOXES_ON_EXIT',
    ),
  languagesFile: z
    .string()
    .optional()
    .describe(
      'YAML file of the languages runs support (default: the languages.yaml shipped with the server); SANDCELL_LANGUAGES_FILE',
    ),
  runApiAuth: z
    .enum(['none', 'api-key'])
    .default('none')
    .describe(
      'whether POST /run, /api/v2/* and GET /languages need the API key like the E2B API (default none: Piston and Lambdo clients send no key, and the server listens on 127.0.0.1; a public --host should set api-key); SANDCELL_RUN_API_AUTH',
    ),
  run: runConfigSchema.prefault({}).describe('one-shot runs'),
  builds: buildsConfigSchema.prefault({}).describe('template builds'),
  images: imagesConfigSchema
    .prefault({})
    .describe('container images templates are built from: registries, mirrors, credentials'),
  metricsIntervalMs: z
    .number()
    .int()
    .positive()
    .default(5000)
    .describe('how often sandbox metrics are sampled, ms; SANDCELL_METRICS_INTERVAL_MS'),
})

export type ServerConfig = z.output<typeof serverConfigSchema>
