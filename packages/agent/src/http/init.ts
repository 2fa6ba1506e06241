/** `POST /init` (the host's first call: env vars, access token, defaults) and `GET /envs`. */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError, type Logger } from '@sandcell/shared'
import * as z from 'zod/mini'
import type { AgentState } from '../agent-state.js'
import { readBody, sendEmpty, sendJson } from './http-response.js'

/** Largest /init body accepted. */
const maxInitBytes = 1024 * 1024

/** envd's PostInitJSONBody; unknown fields (hyperloopIP, volumeMounts…) are ignored. */
const initBodySchema = z.looseObject({
  envVars: z.optional(z.nullable(z.record(z.string(), z.string()))),
  accessToken: z.optional(z.nullable(z.string())),
  defaultUser: z.optional(z.nullable(z.string())),
  defaultWorkdir: z.optional(z.nullable(z.string())),
  timestamp: z.optional(z.nullable(z.string())),
})

/**
 * Applies an /init body. `envVars` replaces the sandbox env (the host sends the full set); an
 * `accessToken` sets or rotates the token (the caller already proved the old one, if any; an
 * empty string removes it); `timestamp` is ignored: the sandbox shares the host's clock.
 * @throws InvalidArgumentError for a body that is not envd's init JSON.
 */
export async function handleInit(
  req: IncomingMessage,
  res: ServerResponse,
  state: AgentState,
  log: Logger,
): Promise<void> {
  const text = (await readBody(req, maxInitBytes)).toString('utf8')
  let json: unknown = {}
  if (text.trim() !== '') {
    try {
      json = JSON.parse(text)
    } catch (err) {
      throw new InvalidArgumentError(`/init body is not JSON: ${(err as Error).message}`)
    }
  }
  const parsed = initBodySchema.safeParse(json)
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (issue) => `${issue.path.map(String).join('.')}: ${issue.message}`,
    )
    throw new InvalidArgumentError(`invalid /init body: ${problems.join('; ')}`)
  }
  const body = parsed.data
  if (body.envVars !== undefined && body.envVars !== null) {
    state.envVars.clear()
    for (const [key, value] of Object.entries(body.envVars)) {
      state.envVars.set(key, value)
    }
  }
  if (body.accessToken !== undefined && body.accessToken !== null) {
    state.accessToken = body.accessToken === '' ? undefined : body.accessToken
  }
  if (body.defaultUser !== undefined && body.defaultUser !== null && body.defaultUser !== '') {
    state.defaultUser = body.defaultUser
  }
  if (
    body.defaultWorkdir !== undefined &&
    body.defaultWorkdir !== null &&
    body.defaultWorkdir !== ''
  ) {
    state.defaultWorkdir = body.defaultWorkdir
  }
  log.info(
    {
      envVars: state.envVars.size,
      secured: state.accessToken !== undefined,
      defaultUser: state.defaultUser,
      defaultWorkdir: state.defaultWorkdir,
    },
    'initialized',
  )
  sendEmpty(res)
}

/** `GET /envs`: the sandbox env vars set by /init. */
export function handleEnvs(res: ServerResponse, state: AgentState): void {
  sendJson(res, 200, Object.fromEntries(state.envVars))
}
