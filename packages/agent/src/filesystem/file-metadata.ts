/**
 * User-defined file metadata as envd keeps it: each key is a `user.e2b.<key>` extended attribute
 * on the file, written by uploads (`X-Metadata-<key>` headers) and shown in every EntryInfo, so
 * metadata set inside the sandbox (setfattr, os.setxattr) shows up too.
 */
import { isUtf8 } from 'node:buffer'
import { InvalidArgumentError } from '@sandcell/shared'
import { errnoCode, nativeAddon, type XattrTarget } from '../native-addon.js'

/** Key → value; keys are lowercase when they came from headers. */
export type FileMetadata = Record<string, string>

/** The xattr namespace of metadata keys (`user.` is the only one unprivileged users may write). */
export const metadataXattrPrefix = 'user.e2b.'

/** Longest key in bytes: Linux caps a whole xattr name (prefix included) at 255 bytes. */
export const maxMetadataKeyBytes = 255 - metadataXattrPrefix.length

/**
 * Most bytes of metadata per file, counting each key with its prefix and its value: ext4 keeps all
 * of an inode's xattrs in one 4 KiB block, so more could not be stored anyway (envd's limit).
 */
export const maxMetadataTotalBytes = 4096

const metadataHeaderPrefix = 'x-metadata-'

/** Printable US-ASCII (0x20-0x7e), what HTTP headers carry safely and envd accepts. */
const printableAscii = /^[\x20-\x7e]*$/

/**
 * The metadata of an upload: every `X-Metadata-<key>` header, key lowercased, the first value
 * when a header repeats (envd's rule). Headers with an empty key are ignored.
 */
export function metadataFromHeaders(headers: NodeJS.Dict<string[]>): FileMetadata {
  const entries: [string, string][] = []
  for (const [name, values] of Object.entries(headers)) {
    const value = values?.[0]
    if (!name.startsWith(metadataHeaderPrefix) || value === undefined) {
      continue
    }
    const key = name.slice(metadataHeaderPrefix.length).toLowerCase()
    if (key !== '') {
      entries.push([key, value])
    }
  }
  // fromEntries defines own properties, so a key like `__proto__` stays a key.
  return Object.fromEntries(entries)
}

/**
 * Checks metadata before anything is written, with envd's limits.
 * @throws InvalidArgumentError naming the first bad key or the total size.
 */
export function validateMetadata(metadata: FileMetadata): void {
  let totalBytes = 0
  for (const [key, value] of Object.entries(metadata)) {
    if (key === '') {
      throw new InvalidArgumentError('invalid metadata: a metadata key must not be empty')
    }
    if (!printableAscii.test(key)) {
      throw new InvalidArgumentError(
        `invalid metadata: key ${JSON.stringify(key)} must be printable US-ASCII`,
      )
    }
    if (key.length > maxMetadataKeyBytes) {
      throw new InvalidArgumentError(
        `invalid metadata: key ${JSON.stringify(key.slice(0, 32))}… is ${key.length} bytes, at most ${maxMetadataKeyBytes}`,
      )
    }
    if (!printableAscii.test(value)) {
      throw new InvalidArgumentError(
        `invalid metadata: the value of key ${JSON.stringify(key)} must be printable US-ASCII`,
      )
    }
    totalBytes += metadataXattrPrefix.length + key.length + value.length
  }
  if (totalBytes > maxMetadataTotalBytes) {
    throw new InvalidArgumentError(
      `invalid metadata: ${totalBytes} bytes in all (keys with their ${JSON.stringify(metadataXattrPrefix)} prefix, and values), at most ${maxMetadataTotalBytes}`,
    )
  }
}

/**
 * The metadata on `target` (a path, whose final symlink is not followed, or an fd), or undefined
 * when it has none. Best effort, like envd: a file system without xattrs, an attribute the user
 * may not read, or a key or value that is not UTF-8 (set inside the sandbox) is left out rather
 * than failing the entry it belongs to. Call inside the user's credential bracket.
 */
export function readMetadata(target: XattrTarget): FileMetadata | undefined {
  const addon = nativeAddon()
  const names = addon.xattrList(target)
  if (typeof names === 'number') {
    return undefined
  }
  const entries: [string, string][] = []
  for (const name of names) {
    if (!name.startsWith(metadataXattrPrefix)) {
      continue
    }
    const key = Buffer.from(name.slice(metadataXattrPrefix.length), 'latin1')
    const value = addon.xattrGet(target, name)
    if (typeof value === 'number' || value === null || !isUtf8(key) || !isUtf8(value)) {
      continue
    }
    entries.push([key.toString('utf8'), value.toString('utf8')])
  }
  return entries.length === 0 ? undefined : Object.fromEntries(entries)
}

/**
 * Makes `metadata` the file's whole metadata: keys it lacks are removed, so an overwrite without
 * metadata clears it (truncating a file keeps its xattrs). Works on the open file, so a path
 * swapped for a symlink meanwhile cannot redirect it. Writes nothing, without an error, when the
 * file system has no xattrs (/proc, /sys…), as envd does: the entry read back then shows none.
 * @throws InvalidArgumentError for metadata over the limits (see validateMetadata).
 * @throws an Error with the errno `code` (ENOSPC, EACCES…) for fromNodeError.
 */
export function replaceMetadata(fd: number, metadata: FileMetadata): void {
  validateMetadata(metadata)
  const addon = nativeAddon()
  const names = addon.xattrList(fd)
  if (typeof names === 'number') {
    if (isUnsupported(names)) {
      return
    }
    throw xattrError(names, 'flistxattr')
  }
  for (const name of names) {
    if (name.startsWith(metadataXattrPrefix)) {
      const key = name.slice(metadataXattrPrefix.length)
      if (!Object.hasOwn(metadata, key)) {
        check(addon.xattrRemove(fd, name), 'fremovexattr')
      }
    }
  }
  for (const [key, value] of Object.entries(metadata)) {
    const result = addon.xattrSet(fd, metadataXattrPrefix + key, Buffer.from(value, 'latin1'))
    if (isUnsupported(result)) {
      return
    }
    check(result, 'fsetxattr')
  }
}

function isUnsupported(result: number): boolean {
  const code = result < 0 ? errnoCode(-result) : undefined
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP'
}

function check(result: number, syscall: string): void {
  if (result < 0) {
    throw xattrError(result, syscall)
  }
}

function xattrError(result: number, syscall: string): NodeJS.ErrnoException {
  const code = errnoCode(-result)
  const error: NodeJS.ErrnoException = new Error(`${syscall} failed: ${code}`)
  error.code = code
  error.errno = result
  error.syscall = syscall
  return error
}
