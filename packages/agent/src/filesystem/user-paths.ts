/** How a path from a request becomes an absolute sandbox path for a user (envd's rules). */
import { posix } from 'node:path'
import { InvalidArgumentError } from '@sandcell/shared'

/** The parts of a user that path expansion needs. */
export interface PathUser {
  name: string
  /** Home directory, a sandbox path. */
  home: string
}

/**
 * Expands a request path like envd: `~` and `~/x` are the user's home, a relative path is
 * relative to the home, an empty one is `defaultWorkdir` (or the home). The result is absolute
 * and normalised but symlinks are not resolved (resolveInside does that).
 * @throws InvalidArgumentError for `~other` (another user's home is not expanded).
 */
export function expandUserPath(path: string, user: PathUser, defaultWorkdir?: string): string {
  let expanded = path === '' ? (defaultWorkdir ?? user.home) : path
  if (expanded.startsWith('~')) {
    if (expanded.length > 1 && expanded[1] !== '/') {
      throw new InvalidArgumentError(
        `cannot expand ${JSON.stringify(path)}: only ~ (the user's own home) is supported`,
      )
    }
    expanded = posix.join(user.home, expanded.slice(1))
  }
  return posix.isAbsolute(expanded) ? posix.normalize(expanded) : posix.join(user.home, expanded)
}

/**
 * Checks a required path field and expands it.
 * @throws InvalidArgumentError naming the field when it is empty.
 */
export function requirePath(
  field: string,
  path: string,
  user: PathUser,
  defaultWorkdir?: string,
): string {
  if (path === '') {
    throw new InvalidArgumentError(`${field} is required`)
  }
  return expandUserPath(path, user, defaultWorkdir)
}
