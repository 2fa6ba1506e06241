/** The file operations behind the Filesystem service, each run with the requesting user's ids. */
import {
  lstatSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmdirSync,
  statSync,
  unlinkSync,
  type BigIntStats,
} from 'node:fs'
import { posix } from 'node:path'
import { setImmediate as nextMacrotask } from 'node:timers/promises'
import {
  AlreadyExistsError,
  FileNotFoundError,
  InvalidArgumentError,
  ResourceExhaustedError,
} from '@sandcell/shared'
import { runAs, type Credentials } from './as-user.js'
import {
  describeEntry,
  describeStats,
  type EntryInfoContext,
  type EntryInfoInit,
} from './entry-info.js'
import { fromNodeError } from './node-errors.js'
import { resolveInside, type ResolvedPath } from './resolve-inside.js'

/** What every operation needs: the root, user names for entries, and whose ids to use. */
export interface FileOperationContext extends EntryInfoContext {
  creds: Credentials
}

/** Most entries one ListDir returns; deeper trees need a smaller depth. */
export const maxListEntries = 100_000

/** Filesystem entries removed per event-loop turn, so a huge removal does not stall streams. */
const removeBatchSize = 256

/**
 * Runs `step` as the user and translates Node errors (naming `path`).
 * @throws SandcellError for every failure.
 */
export function asUser<T>(
  context: FileOperationContext,
  op: string,
  path: string,
  step: () => T,
): T {
  try {
    return runAs(context.creds, step)
  } catch (err) {
    throw fromNodeError(err, { op, path })
  }
}

/** Resolves a sandbox path inside the root (see resolveInside); call inside a bracket. */
export function resolvePath(
  context: FileOperationContext,
  path: string,
  followFinal = true,
): ResolvedPath {
  return resolveInside(context.root, path, { followFinal })
}

/** Entry info of `path` itself (a final symlink is not followed). */
export function statPath(context: FileOperationContext, path: string): EntryInfoInit {
  return asUser(context, 'stat', path, () =>
    describeEntry(context, resolvePath(context, path, false)),
  )
}

/**
 * Creates a directory and its missing parents, owned by the user.
 * @throws AlreadyExistsError when it already is a directory (the SDK's makeDir returns false).
 * @throws InvalidArgumentError when something else is at the path.
 */
export function makeDirectory(context: FileOperationContext, path: string): EntryInfoInit {
  return asUser(context, 'create directory', path, () => {
    const resolved = resolvePath(context, path)
    let existing: BigIntStats | undefined
    try {
      existing = statSync(resolved.hostPath, { bigint: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw err
      }
    }
    if (existing?.isDirectory() === true) {
      throw new AlreadyExistsError(`directory ${path} already exists`, { details: { path } })
    }
    if (existing !== undefined) {
      throw new InvalidArgumentError(`${path} already exists and is not a directory`, {
        details: { path },
      })
    }
    mkdirSync(resolved.hostPath, { recursive: true, mode: 0o755 })
    return describeEntry(context, resolved)
  })
}

/**
 * Renames `source` to `destination` (neither final symlink followed), creating the destination's
 * missing parents. Returns the entry at the destination.
 */
export function movePath(
  context: FileOperationContext,
  source: string,
  destination: string,
): EntryInfoInit {
  return asUser(context, 'move', source, () => {
    const from = resolvePath(context, source, false)
    const to = resolvePath(context, destination, false)
    try {
      lstatSync(from.hostPath)
    } catch (err) {
      throw fromNodeError(err, { op: 'move', path: source })
    }
    try {
      mkdirSync(posix.dirname(to.hostPath), { recursive: true, mode: 0o755 })
      renameSync(from.hostPath, to.hostPath)
    } catch (err) {
      throw fromNodeError(err, { op: `move ${source} to`, path: destination })
    }
    return describeEntry(context, to)
  })
}

/**
 * Lists a directory (a final symlink is followed) `depth` levels deep without descending into
 * symlinked directories. Entry paths are under the requested path, like envd.
 * @throws InvalidArgumentError when the path is not a directory.
 * @throws ResourceExhaustedError beyond {@link maxListEntries} entries.
 */
export function listDirectory(
  context: FileOperationContext,
  path: string,
  depth: number,
): EntryInfoInit[] {
  return asUser(context, 'list', path, () => {
    const resolved = resolvePath(context, path)
    const stats = statSync(resolved.hostPath)
    if (!stats.isDirectory()) {
      throw new InvalidArgumentError(`${path} is not a directory`, { details: { path } })
    }
    const entries: EntryInfoInit[] = []
    const walk = (hostDir: string, sandboxDir: string, level: number): void => {
      let names: string[]
      try {
        names = readdirSync(hostDir)
      } catch (err) {
        // The top directory must be readable; below it, skip what the user may not list.
        if (level === 1) {
          throw err
        }
        return
      }
      for (const name of names.sort()) {
        if (entries.length >= maxListEntries) {
          throw new ResourceExhaustedError(
            `listing ${path} at depth ${depth} has more than ${maxListEntries} entries; use a smaller depth`,
          )
        }
        const entry: ResolvedPath = {
          hostPath: `${hostDir}/${name}`,
          sandboxPath: posix.join(sandboxDir, name),
        }
        let entryStats: BigIntStats
        try {
          entryStats = lstatSync(entry.hostPath, { bigint: true })
        } catch {
          continue // removed while we listed
        }
        entries.push(describeStats(context, entry, entryStats))
        if (level < depth && entryStats.isDirectory()) {
          walk(entry.hostPath, entry.sandboxPath, level + 1)
        }
      }
    }
    walk(resolved.hostPath.replace(/\/$/, ''), path, 1)
    return entries
  })
}

/**
 * Removes a file, link or whole directory tree (a final symlink is removed, not followed). A
 * missing path is not an error, like envd's RemoveAll. Large trees are removed in batches across
 * event-loop turns, each batch in its own credential bracket.
 */
export async function removePath(context: FileOperationContext, path: string): Promise<void> {
  const resolved = asUser(context, 'remove', path, () => resolvePath(context, path, false))
  if (resolved.sandboxPath === '/') {
    throw new InvalidArgumentError('refusing to remove the sandbox root /')
  }
  const stack: { hostPath: string; listed: boolean }[] = [
    { hostPath: resolved.hostPath, listed: false },
  ]
  while (stack.length > 0) {
    asUser(context, 'remove', path, () => {
      for (let done = 0; done < removeBatchSize && stack.length > 0; done += 1) {
        removeStep(stack)
      }
    })
    if (stack.length > 0) {
      await nextMacrotask()
    }
  }
}

/** One step of a post-order removal: list a directory once, then remove it when emptied. */
function removeStep(stack: { hostPath: string; listed: boolean }[]): void {
  const top = stack[stack.length - 1] as { hostPath: string; listed: boolean }
  try {
    if (top.listed) {
      rmdirSync(top.hostPath)
      stack.pop()
      return
    }
    const stats = lstatSync(top.hostPath)
    if (!stats.isDirectory()) {
      unlinkSync(top.hostPath)
      stack.pop()
      return
    }
    top.listed = true
    for (const name of readdirSync(top.hostPath)) {
      stack.push({ hostPath: `${top.hostPath}/${name}`, listed: false })
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      stack.pop() // already gone (or removed concurrently): fine
      return
    }
    throw err
  }
}

/**
 * Checks that a resolved path is an existing directory (for a watch or a cwd); call in a bracket.
 * @throws FileNotFoundError or InvalidArgumentError naming the sandbox path.
 */
export function requireDirectory(resolved: ResolvedPath, path: string): void {
  let stats
  try {
    stats = statSync(resolved.hostPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new FileNotFoundError(path, { cause: err })
    }
    throw err
  }
  if (!stats.isDirectory()) {
    throw new InvalidArgumentError(`${path} is not a directory`, { details: { path } })
  }
}
