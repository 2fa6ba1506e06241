/**
 * Layer entry names made safe to join under a root, and the OCI whiteout names read from them
 * (`.wh.<name>` deletes a lower path, `.wh..wh..opq` empties the lower content of a directory).
 */
import { ImageRejectedError } from '@sandcell/shared'

/**
 * The relative path a layer entry names: a leading `./` and empty or `.` components dropped, a
 * trailing slash ignored. The layer's root itself is `''`.
 * @throws ImageRejectedError naming `entryName` for an absolute path, a `..` component or a
 * NUL byte
 */
export function normalizeEntryPath(entryName: string, what: string): string {
  if (entryName.includes('\0')) {
    throw rejectEntry(entryName, what, 'its name contains a NUL byte')
  }
  if (entryName.startsWith('/')) {
    throw rejectEntry(entryName, what, 'its path is absolute')
  }
  const parts: string[] = []
  for (const part of entryName.split('/')) {
    if (part === '' || part === '.') {
      continue
    }
    if (part === '..') {
      throw rejectEntry(entryName, what, "its path has a '..' component")
    }
    parts.push(part)
  }
  return parts.join('/')
}

export function rejectEntry(entryName: string, what: string, reason: string): ImageRejectedError {
  const shown = JSON.stringify(entryName.slice(0, 256))
  return new ImageRejectedError(`${what}: entry ${shown} is refused: ${reason}`, {
    details: { entry: entryName.slice(0, 256) },
  })
}

const whiteoutPrefix = '.wh.'
const opaqueMarker = '.wh..wh..opq'
const metadataPrefix = '.wh..wh.'

/** What a (normalized) entry path means to the layer above the plain file it is in a tar. */
export type WhiteoutKind =
  | { kind: 'whiteout'; target: string }
  | { kind: 'opaque'; dir: string }
  /** AUFS bookkeeping (`.wh..wh.plnk` and the like): ignored, as Docker ignores it. */
  | { kind: 'metadata' }

/**
 * Classifies a normalized path by its last component: a whiteout of a sibling, an opaque
 * marker of its directory, AUFS metadata, or undefined for an ordinary entry.
 * @throws ImageRejectedError for a whiteout of `.` or `..` or of nothing
 */
export function classifyWhiteout(path: string, what: string): WhiteoutKind | undefined {
  const slash = path.lastIndexOf('/')
  const dir = slash === -1 ? '' : path.slice(0, slash)
  const base = path.slice(slash + 1)
  if (!base.startsWith(whiteoutPrefix)) {
    return undefined
  }
  if (base === opaqueMarker) {
    return { kind: 'opaque', dir }
  }
  if (base.startsWith(metadataPrefix)) {
    return { kind: 'metadata' }
  }
  const name = base.slice(whiteoutPrefix.length)
  if (name === '' || name === '.' || name === '..') {
    throw rejectEntry(path, what, 'it is a whiteout of no file')
  }
  return { kind: 'whiteout', target: dir === '' ? name : `${dir}/${name}` }
}

/** The ancestors of a relative path, outermost first (`a/b/c` → `a`, `a/b`). */
export function ancestorsOf(path: string): string[] {
  const parts = path.split('/')
  const ancestors: string[] = []
  for (let i = 1; i < parts.length; i += 1) {
    ancestors.push(parts.slice(0, i).join('/'))
  }
  return ancestors
}
