/** lstat that answers "not there" instead of throwing, for the layer writer and the merge. */
import { lstatSync, type Stats } from 'node:fs'

/** The entry at `path` itself (links not followed), or undefined when it or a parent is missing. */
export function lstatIfExists(path: string): Stats | undefined {
  try {
    return lstatSync(path)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return undefined
    }
    throw err
  }
}
