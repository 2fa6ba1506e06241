/**
 * Builds an image's root filesystem from its unpacked layers, bottom to top, with hard links to
 * the layers' files (a file shared by images and layers is stored once) and directories and
 * symlinks recreated with their owner, mode and time: overlayfs semantics, applied once.
 */
import {
  chmodSync,
  copyFileSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  type Stats,
} from 'node:fs'
import { join } from 'node:path'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { DriverError, ImageRejectedError, errorMessage } from '@sandcell/shared'
import { ancestorsOf } from './layer-entry-path.js'
import type { UnpackedLayer } from './layer-unpack.js'
import { lstatIfExists } from './lstat.js'

/** One layer as the merge reads it: its tree and what `layer.json` says about it. */
export interface MergeLayer {
  treeDir: string
  record: Pick<UnpackedLayer, 'whiteouts' | 'opaqueDirs' | 'crossLayerLinks' | 'implicitDirs'>
  /** Names the layer in errors. */
  what: string
}

// Yield to the event loop now and then: a large image has hundreds of thousands of entries.
const yieldEvery = 2048

/**
 * Applies `layers` (bottom first) into the empty directory `rootDir`: a layer's opaque
 * directories lose their lower content and its whiteouts remove lower paths, then its entries
 * go over what is there (a file replaces anything, a directory over a non-directory replaces
 * it, a directory over a directory takes the upper owner and mode unless the layer only made it
 * implicitly), then its hard links into lower layers are linked. No path is ever resolved
 * through a symlink of the merged tree.
 * @throws ImageRejectedError for a hard link whose target no lower layer has; DriverError when
 * the disk fails; the signal's reason when aborted
 */
export async function mergeLayers(
  layers: readonly MergeLayer[],
  rootDir: string,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  const merge = new Merge(rootDir, options.signal)
  for (const layer of layers) {
    await merge.apply(layer)
  }
  merge.finish()
}

class Merge {
  readonly #root: string
  readonly #signal: AbortSignal | undefined
  readonly #dirTimes = new Map<string, Date>()
  #sinceYield = 0

  constructor(root: string, signal: AbortSignal | undefined) {
    this.#root = root
    this.#signal = signal
  }

  async apply(layer: MergeLayer): Promise<void> {
    const { record } = layer
    for (const dir of record.opaqueDirs) {
      if (this.#lookup(dir)?.isDirectory() === true) {
        const absolute = join(this.#root, dir)
        for (const name of readdirSync(absolute)) {
          this.#fs(dir, () => rmSync(join(absolute, name), { recursive: true, force: true }))
        }
      }
    }
    for (const path of record.whiteouts) {
      if (this.#lookup(path) !== undefined) {
        this.#fs(path, () => rmSync(join(this.#root, path), { recursive: true, force: true }))
      }
    }
    const implicit = new Set(record.implicitDirs)
    this.#copyAttributes('', lstatSync(layer.treeDir))
    const pending = ['']
    while (pending.length > 0) {
      const dir = pending.pop() as string // the loop condition guarantees one
      for (const entry of readdirSync(join(layer.treeDir, dir), { withFileTypes: true })) {
        const path = dir === '' ? entry.name : `${dir}/${entry.name}`
        const source = join(layer.treeDir, path)
        if (entry.isDirectory()) {
          this.#mergeDirectory(path, lstatSync(source), implicit.has(path))
          pending.push(path)
        } else if (entry.isFile()) {
          this.#replaceWith(path, () => this.#linkFile(source, path))
        } else if (entry.isSymbolicLink()) {
          const stats = lstatSync(source)
          this.#replaceWith(path, () => {
            const target = join(this.#root, path)
            symlinkSync(readlinkSync(source), target)
            lchownSync(target, stats.uid, stats.gid)
            lutimesSync(target, stats.mtime, stats.mtime)
          })
        }
        await this.#maybeYield()
      }
    }
    for (const { path, target } of record.crossLayerLinks) {
      const found = this.#lookup(target)
      if (found?.isFile() !== true) {
        throw new ImageRejectedError(
          `${layer.what}: the hard link ${JSON.stringify(path)} points to ${JSON.stringify(target)}, which no lower layer has as a regular file`,
          { details: { path, target } },
        )
      }
      this.#replaceWith(path, () => this.#linkFile(join(this.#root, target), path))
    }
  }

  /** Directory times last: every entry made inside a directory changed its mtime. */
  finish(): void {
    for (const [path, time] of this.#dirTimes) {
      if (this.#lookup(path)?.isDirectory() === true) {
        this.#fs(path, () => utimesSync(join(this.#root, path), time, time))
      }
    }
  }

  #mergeDirectory(path: string, stats: Stats, implicit: boolean): void {
    const target = join(this.#root, path)
    const existing = lstatIfExists(target)
    if (existing?.isDirectory() === true) {
      if (!implicit) {
        this.#copyAttributes(path, stats)
      }
      return
    }
    if (existing !== undefined) {
      this.#fs(path, () => unlinkSync(target))
    }
    this.#fs(path, () => mkdirSync(target, { mode: 0o700 }))
    this.#copyAttributes(path, stats)
  }

  #copyAttributes(path: string, stats: Stats): void {
    const target = join(this.#root, path)
    this.#fs(path, () => {
      lchownSync(target, stats.uid, stats.gid)
      chmodSync(target, stats.mode & 0o7777)
    })
    this.#dirTimes.set(path, stats.mtime)
  }

  /** Removes whatever the merged tree has at `path`, then makes the new entry. */
  #replaceWith(path: string, make: () => void): void {
    const target = join(this.#root, path)
    const existing = lstatIfExists(target)
    this.#fs(path, () => {
      if (existing?.isDirectory() === true) {
        rmSync(target, { recursive: true, force: true })
        this.#dirTimes.delete(path)
      } else if (existing !== undefined) {
        unlinkSync(target)
      }
      make()
    })
  }

  /** A hard link to the layer's file; a copy with the same attributes past the link limit. */
  #linkFile(source: string, path: string): void {
    const target = join(this.#root, path)
    try {
      linkSync(source, target)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EMLINK') {
        throw err
      }
      const stats = lstatSync(source)
      copyFileSync(source, target)
      lchownSync(target, stats.uid, stats.gid)
      chmodSync(target, stats.mode & 0o7777)
      utimesSync(target, stats.atime, stats.mtime)
    }
  }

  /** The merged tree's entry at `path`, or undefined when it or a parent is absent or not a real directory. */
  #lookup(path: string): Stats | undefined {
    for (const ancestor of ancestorsOf(path)) {
      if (lstatIfExists(join(this.#root, ancestor))?.isDirectory() !== true) {
        return undefined
      }
    }
    return lstatIfExists(join(this.#root, path))
  }

  async #maybeYield(): Promise<void> {
    this.#sinceYield += 1
    if (this.#sinceYield >= yieldEvery) {
      this.#sinceYield = 0
      await yieldToLoop()
      this.#signal?.throwIfAborted()
    }
  }

  #fs(path: string, call: () => void): void {
    try {
      call()
    } catch (err) {
      throw new DriverError(
        `cannot merge ${JSON.stringify(path)} into the image root: ${errorMessage(err)}`,
        {
          cause: err,
          details: { path },
        },
      )
    }
  }
}
