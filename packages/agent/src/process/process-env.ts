/** The environment a sandbox process starts with. */
import { standardPath } from '@sandcell/shared'
import type { SandboxUser } from './users.js'

/** Options for {@link buildProcessEnv}. */
export interface BuildProcessEnvOptions {
  user: SandboxUser
  /** Sandbox path of the working directory. */
  cwd: string
  /** Env vars set by /init. */
  sandboxEnv: ReadonlyMap<string, string>
  /** The request's own `envs`. */
  requestEnv: Readonly<Record<string, string>>
  /** Extra defaults (e.g. TERM for a PTY) that /init and the request may override. */
  defaults?: Readonly<Record<string, string>>
}

/**
 * The user basics (HOME, USER, LOGNAME, SHELL, PATH, PWD), then `defaults`, then /init's env vars,
 * then the request's `envs`: later wins. Nothing of the agent's own environment leaks in.
 */
export function buildProcessEnv(options: BuildProcessEnvOptions): Record<string, string> {
  const { user } = options
  const env: Record<string, string> = {
    HOME: user.home,
    USER: user.name,
    LOGNAME: user.name,
    SHELL: user.shell,
    // When neither /init nor the request sets one: Debian's default for login shells.
    PATH: standardPath,
    PWD: options.cwd,
    ...options.defaults,
  }
  for (const [key, value] of options.sandboxEnv) {
    env[key] = value
  }
  for (const [key, value] of Object.entries(options.requestEnv)) {
    env[key] = value
  }
  return env
}
