/**
 * Resolves a sandbox path to a host path inside the agent's root, walking every symlink itself so
 * that no path or link can reach outside the root.
 *
 * Semantics are chroot's: an absolute link target is re-rooted at the root, and `..` never climbs
 * above it. When the root is not `/` (tests, and any future host-side use), a path or link that
 * tries to climb above the root is rejected with PathEscapeError rather than clamped, because it
 * can only be an attack or a mistake there. With root `/` (inside a container or VM) POSIX rules
 * apply unchanged (`/..` is `/`).
 *
 * This is defence in depth, not the boundary: a component swapped for a symlink between this walk
 * and the operation that uses the result is followed by the kernel (Node has no openat2 with
 * RESOLVE_IN_ROOT). Inside a sandbox the root is `/`, so that race cannot leave it, and the
 * operation itself runs with the requesting user's credentials (see as-user.ts).
 */
import { lstatSync, readlinkSync } from 'node:fs'
import { InvalidArgumentError, PathEscapeError } from '@sandcell/shared'

/** Linux's limit on symlinks followed while resolving one path (MAXSYMLINKS). */
const maxSymlinks = 40

/** A path in both views: where the agent touches it, and what the sandbox calls it. */
export interface ResolvedPath {
  /** Absolute host path, inside the root. */
  hostPath: string
  /** Absolute sandbox path (relative to the root, starting with `/`), symlinks resolved. */
  sandboxPath: string
}

/** Options for {@link resolveInside}. */
export interface ResolveInsideOptions {
  /**
   * Follow the last component when it is a symlink. False for operations that act on the link
   * itself (remove, move, lstat-style stat). @default true
   */
  followFinal?: boolean
  /**
   * Called with each symlink (the link's own path) before it is followed; throwing stops the
   * resolution. Lets a caller refuse links it made itself (an archive's, see http/archive.ts).
   */
  beforeFollow?: (link: ResolvedPath) => void
}

/**
 * Resolves `path` (an absolute sandbox path; a relative one is taken from `/`) inside `root` (an
 * absolute, symlink-free host path). Components that do not exist are kept as written, so the
 * result can name something about to be created.
 * @throws InvalidArgumentError for a NUL byte or a symlink loop.
 * @throws PathEscapeError when `..` or a link would climb above a root that is not `/`.
 * @throws the Node error of an lstat/readlink that fails other than with ENOENT/ENOTDIR (EACCES…).
 */
export function resolveInside(
  root: string,
  path: string,
  options: ResolveInsideOptions = {},
): ResolvedPath {
  if (path.includes('\0')) {
    throw new InvalidArgumentError(`path ${JSON.stringify(path)} contains a NUL byte`)
  }
  const followFinal = options.followFinal ?? true
  const rootPrefix = root === '/' ? '' : root.replace(/\/+$/, '')
  const hostOf = (parts: readonly string[]): string =>
    parts.length === 0 ? rootPrefix || '/' : `${rootPrefix}/${parts.join('/')}`
  const resolved: string[] = []
  const pending = components(path)
  let linksFollowed = 0

  const climb = (): void => {
    if (resolved.length > 0) {
      resolved.pop()
    } else if (rootPrefix !== '') {
      throw new PathEscapeError(path)
    }
  }

  while (pending.length > 0) {
    const component = pending.shift() as string
    if (component === '..') {
      climb()
      continue
    }
    resolved.push(component)
    if (pending.length === 0 && !followFinal) {
      break
    }
    let isLink: boolean
    try {
      isLink = lstatSync(hostOf(resolved)).isSymbolicLink()
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'ENOENT' && code !== 'ENOTDIR') {
        throw err
      }
      // Nothing below a missing component can be a link: keep the rest as written.
      for (const rest of pending.splice(0)) {
        if (rest === '..') {
          climb()
        } else {
          resolved.push(rest)
        }
      }
      break
    }
    if (!isLink) {
      continue
    }
    linksFollowed += 1
    if (linksFollowed > maxSymlinks) {
      throw new InvalidArgumentError(
        `too many levels of symbolic links resolving ${JSON.stringify(path)} (a link loop?)`,
        { details: { path } },
      )
    }
    options.beforeFollow?.({ hostPath: hostOf(resolved), sandboxPath: `/${resolved.join('/')}` })
    const target = readlinkSync(hostOf(resolved))
    resolved.pop()
    if (target.startsWith('/')) {
      // Re-rooted: an absolute target means the same path inside the sandbox.
      resolved.length = 0
    }
    pending.unshift(...components(target))
  }
  return { hostPath: hostOf(resolved), sandboxPath: `/${resolved.join('/')}` }
}

/** Splits a path into its components, dropping empty ones and `.`. */
function components(path: string): string[] {
  return path.split('/').filter((part) => part !== '' && part !== '.')
}
