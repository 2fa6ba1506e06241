/**
 * Walks a directory tree the way the ownership shift needs: lstat only, each inode once, abortable
 * and with progress; also counts and measures trees.
 */
import { lstatSync, readdirSync, type BigIntStats } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { DriverError, errorMessage } from '@sandcell/shared'

/** Progress of a tree walk: paths handled so far against the expected count. */
export interface WalkProgress {
  done: number
  /** Paths the tree holds (from {@link countFiles}); 0 when not known. */
  total: number
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

/**
 * Counts the paths below and including `dir` (a hard-linked file counts once per name), the
 * progress total of the ownership shift. Reads directories only, no stat per entry: ~6x
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
 * Paths, inodes and bytes of a tree, walked like the ownership shift walks it but changing
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

export interface WalkOptions {
  /** Called once per inode (a hard link's later names are skipped), directories included. */
  visit: (path: string, stats: BigIntStats) => void
  signal?: AbortSignal
  /** Paths walked so far, about every 50 ms. */
  onProgress?: (done: number) => void
}

/**
 * Depth-first lstat walk that never follows symlinks and visits each inode once.
 * @throws DriverError when an entry cannot be read; what `visit` throws; the signal's reason
 * when aborted.
 */
export async function walkTree(dir: string, options: WalkOptions): Promise<TreeSummary> {
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
