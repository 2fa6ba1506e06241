/** The agent's mutable runtime state that `/init` sets: env vars, access token, default user. */
import { readFileSync } from 'node:fs'
import { ConfigError } from '@sandcell/shared'

/** What `/init` (or a flag) has told the agent; every request reads it, nothing caches it. */
export interface AgentState {
  /** Env vars every process gets (after the user basics, before the request's own `envs`). */
  readonly envVars: Map<string, string>
  /** Once set, every route but `/health` requires `X-Access-Token` (or a signed URL). */
  accessToken: string | undefined
  /** User for requests that name none; `user` when unset. */
  defaultUser: string | undefined
  /** Sandbox path used when a request gives an empty path or cwd; the user's home when unset. */
  defaultWorkdir: string | undefined
}

/** Options for {@link createAgentState}. */
export interface CreateAgentStateOptions {
  /** File holding an access token to require from the start (trailing whitespace ignored). */
  accessTokenFile?: string | undefined
}

/**
 * Creates the state, reading the access token file when given.
 * @throws ConfigError when the token file cannot be read or is empty.
 */
export function createAgentState(options: CreateAgentStateOptions = {}): AgentState {
  let accessToken: string | undefined
  if (options.accessTokenFile !== undefined) {
    try {
      accessToken = readFileSync(options.accessTokenFile, 'utf8').trim()
    } catch (err) {
      throw new ConfigError(
        `cannot read --access-token-file ${options.accessTokenFile}: ${(err as Error).message}`,
        {
          cause: err,
        },
      )
    }
    if (accessToken === '') {
      throw new ConfigError(`--access-token-file ${options.accessTokenFile} is empty`)
    }
  }
  return { envVars: new Map(), accessToken, defaultUser: undefined, defaultWorkdir: undefined }
}
