/**
 * The build state between steps (env, user, workdir) and the small pure rules that change it:
 * ENV values expand earlier variables, WORKDIR joins the current one, image config becomes the
 * starting state.
 */
import { posix } from 'node:path'
import type { BuildState } from './layer-store.js'

/** `$NAME` and `${NAME}` replaced from `env` (unknown: empty), as the shell would; `\$` stays. */
export function expandVariables(value: string, env: Readonly<Record<string, string>>): string {
  return value.replace(
    /\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (match, braced?: string, bare?: string) => {
      if (match === '\\$') {
        return '$'
      }
      return env[braced ?? bare ?? ''] ?? ''
    },
  )
}

/** ENV's arguments `[k1, v1, k2, v2…]` applied in order (a later value sees an earlier one). */
export function applyEnv(state: BuildState, args: readonly string[]): BuildState {
  const env = { ...state.env }
  for (let i = 0; i + 1 < args.length; i += 2) {
    const key = args[i] ?? ''
    env[key] = expandVariables(args[i + 1] ?? '', env)
  }
  return { ...state, env }
}

/** The home directory a user gets from useradd: where relative paths start without a workdir. */
export function homeOf(user: string): string {
  return user === 'root' ? '/root' : `/home/${user}`
}

/** The directory relative paths of a step start at. */
export function currentDir(state: BuildState): string {
  return state.workdir ?? homeOf(state.user)
}

/** WORKDIR's path made absolute against the current directory. */
export function resolveWorkdir(state: BuildState, path: string): string {
  return posix.resolve(currentDir(state), expandVariables(path, state.env))
}

/** An image config's `Env` list (`K=V` strings) as a map. */
export function envFromList(list: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {}
  for (const item of list) {
    const at = item.indexOf('=')
    if (at > 0) {
      env[item.slice(0, at)] = item.slice(at + 1)
    }
  }
  return env
}

/** Single-quoted for sh: safe for any string. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

const userNamePattern = /^[a-z_][a-z0-9_-]*\$?$/i

/** Whether a USER argument is a name useradd accepts (it also goes into shell commands). */
export function isValidUserName(name: string): boolean {
  return name.length <= 32 && userNamePattern.test(name)
}
