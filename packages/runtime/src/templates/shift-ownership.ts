/** Re-owns a template root filesystem into the sandbox user namespace's host id range. */
import { chmodSync, lchownSync, lstatSync, readdirSync, type BigIntStats } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { DriverError, InvalidArgumentError, errorMessage } from '@sandcell/shared'

/** How many ids a sandbox's user namespace maps: sandbox ids 0..65535. */
export const idRangeSize = 65536

/** Progress of a tree walk: paths handled so far against the expected count. */
export interface WalkProgress {
  done: number
  /** Paths the tree holds (from {@link countFiles}); 0 when not known. */
  total: number
}

export interface ShiftOwnershipOptions {
  /** Added to every uid and gid: host id = offset + sandbox id. */
  offset: number
  /** Paths the tree holds, for progress (from {@link countFiles}). @default 0 (unknown) */
  total?: number
  signal?: AbortSignal
  /** Called about every 50 ms while shifting, and once at the end with `done === total`. */
  onProgress?: (progress: WalkProgress) => void
}

/** What a walk over a tree found. */
export interface TreeSummary {
  /** Paths walked, the root included (`find DIR | wc -l`); a hard link counts per name. */
  paths: number
  /** Distinct inodes: a hard-linked file counts once. */
  inodes: number
  /** Bytes of regular files, each inode once (`du -s --apparent-size --bytes`). */
  sizeBytes: number
}

export interface ShiftOwnershipResult extends TreeSummary {
  durationMs: number
}

/**
 * Adds `offset` to the owner and group of `dir` and everything below it, so that a file owned
 * by uid u in the tree is owned by sandbox uid u inside a user namespace that maps sandbox 0 to
 * host `offset`. Symlinks are re-owned themselves and never followed; a hard-linked inode is
 * shifted once (tracked by dev + ino); setuid/setgid bits, which chown clears, are put back.
 *
 * The walk uses synchronous calls on purpose: an lstat + lchown pair takes microseconds on a
 * local disk, while the promise API pays a thread-pool round trip for each call. Measured on a
 * 17.5k-entry Debian tree: 0.3 s synchronous, 1.2-1.5 s with fs/promises and 4-16 calls in
 * flight. It yields to the event loop every couple of thousand entries so that aborts and
 * progress still happen.
 *
 * The tree must be quiescent (nobody else writing into it) and unshifted: an id outside
 * 0..65535 means it was shifted already or cannot be mapped, and the walk stops there. File
 * capabilities and POSIX ACLs are not translated (Debian's base images carry neither).
 *
 * @throws InvalidArgumentError for a bad offset; DriverError naming the path when an entry
 * cannot be shifted; the signal's reason when aborted (the tree is then partly shifted).
 */
export async function shiftOwnership(
  dir: string,
  options: ShiftOwnershipOptions,
): Promise<ShiftOwnershipResult> {
  const { offset, onProgress } = options
  if (!Number.isInteger(offset) || offset < 0 || offset + idRangeSize > 2 ** 32 - 1) {
    throw new InvalidArgumentError(
      `uid offset ${offset} is not usable: it must be an integer >= 0 and offset + ${idRangeSize} must fit in 32 bits`,
    )
  }
  const started = performance.now()
  const total = options.total ?? 0
  const summary = await walkTree(dir, {
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    ...(onProgress === undefined
      ? {}
      : { onProgress: (done: number) => onProgress({ done, total: Math.max(total, done) }) }),
    visit(path, stats) {
      const uid = Number(stats.uid)
      const gid = Number(stats.gid)
      if (uid >= idRangeSize || gid >= idRangeSize) {
        throw new DriverError(
          `${path} is owned by ${uid}:${gid}, outside 0..${idRangeSize - 1}: the tree is already shifted or holds ids a sandbox cannot map`,
          { details: { path, uid, gid } },
        )
      }
      const mode = Number(stats.mode)
      try {
        lchownSync(path, offset + uid, offset + gid)
        // chown clears setuid/setgid on non-directories; a symlink has neither (and chmod
        // would follow it).
        if ((mode & 0o6000) !== 0 && !stats.isSymbolicLink()) {
          chmodSync(path, mode & 0o7777)
        }
      } catch (err) {
        throw new DriverError(`cannot shift ownership of ${path}: ${errorMessage(err)}`, {
          cause: err,
        })
      }
    },
  })
  onProgress?.({ done: summary.paths, total: summary.paths })
  return { ...summary, durationMs: Math.round(performance.now() - started) }
}

/**
 * Counts the paths below and including `dir` (a hard-linked file counts once per name), the
 * progress total of {@link shiftOwnership}. Reads directories only, no stat per entry: ~6x
 * faster than the shift itself (50 ms for 17.5k entries). Symlinks are not followed.
 * @throws DriverError when a directory cannot be read; the signal's reason when aborted.
 */
export async function countFiles(
  dir: string,
  options: { signal?: AbortSignal } = {},
): Promise<number> {
  const { signal } = options
  signal?.throwIfAborted()
  let paths = 1
  let sinceYield = 0
  const pending = [dir]
  while (pending.length > 0) {
    const current = pending.pop() as string // the loop condition guarantees one
    let entries
    try {
      entries = readdirSync(current, { withFileTypes: true })
    } catch (err) {
      throw new DriverError(`cannot count the files of ${current}: ${errorMessage(err)}`, {
        cause: err,
      })
    }
    for (const entry of entries) {
      paths += 1
      if (entry.isDirectory()) {
        pending.push(join(current, entry.name))
      }
    }
    sinceYield += entries.length
    if (sinceYield >= yieldEvery) {
      sinceYield = 0
      await yieldToLoop()
      signal?.throwIfAborted()
    }
  }
  return paths
}

/**
 * Paths, inodes and bytes of a tree, walked like {@link shiftOwnership} walks it but changing
 * nothing.
 * @throws DriverError when an entry cannot be read; the signal's reason when aborted.
 */
export function measureTree(
  dir: string,
  options: { signal?: AbortSignal } = {},
): Promise<TreeSummary> {
  return walkTree(dir, { ...options, visit: () => undefined })
}

// Yielding to the event loop costs a few microseconds; doing it every couple of thousand
// entries keeps a walk abortable and its progress live without slowing it.
const yieldEvery = 2048
const progressIntervalMs = 50

interface WalkOptions {
  /** Called once per inode (a hard link's later names are skipped), directories included. */
  visit: (path: string, stats: BigIntStats) => void
  signal?: AbortSignal
  /** Paths walked so far, about every 50 ms. */
  onProgress?: (done: number) => void
}

/** Depth-first lstat walk that never follows symlinks and visits each inode once. */
async function walkTree(dir: string, options: WalkOptions): Promise<TreeSummary> {
  const { visit, signal, onProgress } = options
  signal?.throwIfAborted()
  // Only inodes with more than one link can be met twice; directories never are.
  const seenLinks = new Set<string>()
  let paths = 0
  let inodes = 0
  let sizeBytes = 0
  let lastProgress = performance.now()

  /** Handles one path; returns whether it is a directory to descend into. */
  const handle = (path: string): boolean => {
    paths += 1
    let stats: BigIntStats
    try {
      // bigint: inode numbers may exceed 2^53 (XFS, btrfs), and a collision would skip a file.
      stats = lstatSync(path, { bigint: true })
    } catch (err) {
      throw new DriverError(`cannot stat ${path}: ${errorMessage(err)}`, { cause: err })
    }
    const isDirectory = stats.isDirectory()
    if (!isDirectory && stats.nlink > 1n) {
      const key = `${stats.dev}:${stats.ino}`
      if (seenLinks.has(key)) {
        return false
      }
      seenLinks.add(key)
    }
    visit(path, stats)
    inodes += 1
    if (stats.isFile()) {
      sizeBytes += Number(stats.size)
    }
    return isDirectory
  }

  const pending = handle(dir) ? [dir] : []
  let sinceYield = 0
  while (pending.length > 0) {
    const current = pending.pop() as string // the loop condition guarantees one
    let names: string[]
    try {
      names = readdirSync(current)
    } catch (err) {
      throw new DriverError(`cannot list ${current}: ${errorMessage(err)}`, { cause: err })
    }
    for (const name of names) {
      const path = join(current, name)
      if (handle(path)) {
        pending.push(path)
      }
    }
    sinceYield += names.length
    if (sinceYield >= yieldEvery) {
      sinceYield = 0
      await yieldToLoop()
      signal?.throwIfAborted()
      const now = performance.now()
      if (onProgress !== undefined && now - lastProgress >= progressIntervalMs) {
        lastProgress = now
        onProgress(paths)
      }
    }
  }
  return { paths, inodes, sizeBytes }
}
