/** The rules a tar entry of `POST /archive` must pass before anything is written for it. */
import { InvalidArgumentError } from '@sandcell/shared'
import type { Header } from 'tar-stream'

/** Permission bits a mode may carry (setuid, setgid, sticky and rwx for all three). */
const permissionBits = 0o7777

interface EntryBase {
  /** The name as the archive spells it, for messages. */
  name: string
  /** Components below the destination; empty for the destination itself (`./`). */
  parts: string[]
  /** Permission bits from the header. */
  mode: number
  mtime: Date
}

/** An entry the agent can write, by kind. */
export type ArchiveEntry =
  | (EntryBase & { kind: 'file'; sizeBytes: number })
  | (EntryBase & { kind: 'directory' })
  | (EntryBase & { kind: 'symlink'; target: string })
  /** `target`: the components of an earlier regular file of the same archive. */
  | (EntryBase & { kind: 'hardlink'; target: string[] })

/** The entry's name in messages: quoted as the archive spells it. */
export function describeEntry(name: string): string {
  return `archive entry ${JSON.stringify(name)}`
}

/**
 * The components of an entry name below the destination: a leading `./` (and any `.` or empty
 * component) is dropped, so `./` and `.` are the destination itself.
 * @throws InvalidArgumentError naming the entry for an absolute name, a `..` component or a NUL.
 */
export function normalizeEntryName(name: string): string[] {
  if (name.includes('\0')) {
    throw new InvalidArgumentError(`${describeEntry(name)} contains a NUL byte`)
  }
  if (name.startsWith('/')) {
    throw new InvalidArgumentError(
      `${describeEntry(name)} has an absolute name; entries must be relative to the destination`,
    )
  }
  const parts = name.split('/').filter((part) => part !== '' && part !== '.')
  if (parts.includes('..')) {
    throw new InvalidArgumentError(
      `${describeEntry(name)} has a .. component; entries must stay below the destination`,
    )
  }
  return parts
}

/**
 * Checks a tar header and says what to write for it.
 * @throws InvalidArgumentError naming the entry for a bad name, a device node, a FIFO, an
 *   unknown type, a symlink without a target, or a non-directory named `./`.
 */
export function parseEntry(header: Header): ArchiveEntry {
  const { name } = header
  const base: EntryBase = {
    name,
    parts: normalizeEntryName(name),
    mode: header.mode & permissionBits,
    mtime: header.mtime,
  }
  // tar-stream reports a type flag it does not know as null, which its types leave out.
  const type = header.type as Header['type'] | null
  if (base.parts.length === 0 && type !== 'directory') {
    throw new InvalidArgumentError(
      `${describeEntry(name)} names the destination itself and must be a directory`,
    )
  }
  switch (type) {
    case 'file':
    case 'contiguous-file':
      return { ...base, kind: 'file', sizeBytes: header.size }
    case 'directory':
      return { ...base, kind: 'directory' }
    case 'symlink':
      if (header.linkname === '' || header.linkname.includes('\0')) {
        throw new InvalidArgumentError(`${describeEntry(name)} is a symlink without a valid target`)
      }
      return { ...base, kind: 'symlink', target: header.linkname }
    case 'link':
      return { ...base, kind: 'hardlink', target: hardLinkTarget(name, header.linkname) }
    case 'character-device':
    case 'block-device':
      throw new InvalidArgumentError(`${describeEntry(name)}: device nodes cannot be copied`)
    case 'fifo':
      throw new InvalidArgumentError(`${describeEntry(name)}: FIFOs cannot be copied`)
    case null:
      throw new InvalidArgumentError(
        `${describeEntry(name)} has a type that cannot be copied (only files, directories, symlinks and hard links can)`,
      )
  }
}

/** A hard link's target, normalized like a name; the target must name a file, not `./`. */
function hardLinkTarget(name: string, linkname: string): string[] {
  let target: string[]
  try {
    target = normalizeEntryName(linkname)
  } catch (err) {
    throw new InvalidArgumentError(
      `${describeEntry(name)} is a hard link to ${JSON.stringify(linkname)}, which is not an earlier regular file of this archive`,
      { cause: err },
    )
  }
  if (target.length === 0) {
    throw new InvalidArgumentError(
      `${describeEntry(name)} is a hard link to the destination directory itself`,
    )
  }
  return target
}

/**
 * The `mode` query parameter: 3 or 4 octal digits ("0755"), or undefined when absent.
 * @throws InvalidArgumentError for anything else.
 */
export function parseModeQuery(text: string | null): number | undefined {
  if (text === null || text === '') {
    return undefined
  }
  if (!/^[0-7]{3,4}$/.test(text)) {
    throw new InvalidArgumentError(
      `mode must be an octal permission like 0755, got ${JSON.stringify(text)}`,
    )
  }
  return Number.parseInt(text, 8)
}
