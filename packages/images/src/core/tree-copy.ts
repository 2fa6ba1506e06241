/** Copies files and trees into an image being built, hard-linking where the filesystem allows. */
import { copyFileSync, linkSync, mkdirSync, readdirSync, readlinkSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'

/** Hard link when on the same filesystem (no copy of node's ~100 MB), copy otherwise. */
export function linkOrCopy(source: string, target: string): void {
  try {
    linkSync(source, target)
  } catch {
    copyFileSync(source, target)
  }
}

/** Copies a tree (hard links where possible), leaving out source maps (`.map`). */
export function copyTree(source: string, target: string): void {
  mkdirSync(target, { recursive: true })
  for (const entry of readdirSync(source, { withFileTypes: true })) {
    const from = join(source, entry.name)
    const to = join(target, entry.name)
    if (entry.isDirectory()) {
      copyTree(from, to)
    } else if (entry.isSymbolicLink()) {
      symlinkSync(readlinkSync(from), to)
    } else if (!entry.name.endsWith('.map')) {
      linkOrCopy(from, to)
    }
  }
}
