/** The agent's one configuration schema and the parser from its command line. */
import { isAbsolute } from 'node:path'
import { parseArgs } from 'node:util'
import { ConfigError } from '@sandcell/shared'
// zod/mini instead of zod: the full build costs ~60 ms of startup, mini ~4 ms.
import * as z from 'zod/mini'

/** Where the agent accepts connections. */
export type ListenSpec =
  { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number }

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

const listenSpecSchema = z.pipe(
  z.string(),
  z.transform((value, ctx): ListenSpec => {
    if (value.startsWith('unix:')) {
      const path = value.slice('unix:'.length)
      if (!isAbsolute(path)) {
        ctx.issues.push({
          code: 'custom',
          input: value,
          message: 'unix socket path must be absolute',
        })
        return z.NEVER
      }
      return { kind: 'unix', path }
    }
    const tcp = /^tcp:(.+):(\d{1,5})$/.exec(value)
    if (tcp !== null) {
      const host = (tcp[1] as string).replace(/^\[(.*)\]$/, '$1')
      const port = Number(tcp[2])
      if (port <= 65535) {
        return { kind: 'tcp', host, port }
      }
    }
    ctx.issues.push({
      code: 'custom',
      input: value,
      message: 'expected unix:/absolute/path or tcp:HOST:PORT (PORT 0 picks a free port)',
    })
    return z.NEVER
  }),
)

const integerString = (what: string, min: number) =>
  z.pipe(
    z.string(),
    z.transform((value, ctx) => {
      const n = Number(value)
      if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min) {
        ctx.issues.push({
          code: 'custom',
          input: value,
          message: `${what} must be an integer ≥ ${min}`,
        })
        return z.NEVER
      }
      return n
    }),
  )

/**
 * The agent's configuration. Every field comes from a flag (the agent reads no environment
 * variables: the sandbox env is the user's, not ours).
 */
export const agentConfigSchema = z.object({
  /** `--listen unix:/path | tcp:HOST:PORT`, repeatable, at least one. */
  listen: z.array(listenSpecSchema).check(z.minLength(1, 'at least one --listen is required')),
  /** `--ready-fd N`: fd to write the ready line to once every listener listens; default none. */
  readyFd: z.optional(integerString('--ready-fd', 0)),
  /** `--root DIR`: every path the file API and process cwd accept resolves inside it; default `/`. */
  root: z._default(
    z.string().check(z.refine((value) => isAbsolute(value), '--root must be an absolute path')),
    '/',
  ),
  /** `--log-level LEVEL`: pino level of the stderr log; default `info`. */
  logLevel: z._default(z.enum(logLevels), 'info'),
  /** `--access-token-file F`: a file holding the access token to require from the start; default none. */
  accessTokenFile: z.optional(z.string()),
  /**
   * `--subscriber-stall-ms MS`: how long an output subscriber (a Start or Connect stream) may hold
   * up a process's output without reading before its stream is dropped; default 10000.
   */
  subscriberStallMs: z._default(integerString('--subscriber-stall-ms', 1), 10_000),
})

export type AgentConfigInput = z.input<typeof agentConfigSchema>
/** The agent's validated, frozen configuration. */
export type AgentConfig = Readonly<z.output<typeof agentConfigSchema>>

/**
 * Parses the agent's command line (without `node` and the script path).
 * @throws ConfigError listing every bad flag at once.
 */
export function parseAgentArgv(argv: readonly string[]): AgentConfig {
  let values: Record<string, string | string[] | boolean | undefined>
  try {
    values = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        listen: { type: 'string', multiple: true },
        'ready-fd': { type: 'string' },
        root: { type: 'string' },
        'log-level': { type: 'string' },
        'access-token-file': { type: 'string' },
        'subscriber-stall-ms': { type: 'string' },
      },
    }).values
  } catch (err) {
    throw new ConfigError(`bad command line: ${(err as Error).message}`, { cause: err })
  }
  return parseAgentConfig({
    listen: (values.listen as string[] | undefined) ?? [],
    readyFd: values['ready-fd'] as string | undefined,
    root: values.root as string | undefined,
    logLevel: values['log-level'] as AgentConfigInput['logLevel'],
    accessTokenFile: values['access-token-file'] as string | undefined,
    subscriberStallMs: values['subscriber-stall-ms'] as string | undefined,
  })
}

/**
 * Validates a configuration given as flag strings.
 * @throws ConfigError naming every bad field.
 */
export function parseAgentConfig(input: AgentConfigInput): AgentConfig {
  const result = agentConfigSchema.safeParse(input)
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const path = issue.path.map(String).join('.')
      return path === '' ? issue.message : `${path}: ${issue.message}`
    })
    throw new ConfigError(`invalid agent configuration: ${problems.join('; ')}`, {
      details: { problems },
    })
  }
  return Object.freeze(result.data)
}
