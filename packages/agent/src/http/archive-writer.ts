/**
 * Writes the entries of an archive below a destination directory, each owned by one user: the
 * file-system half of `POST /archive` (archive.ts reads the tar, archive-entry.ts checks names).
 *
 * It runs with the agent's own credentials (root in a sandbox), not the user's: like a Dockerfile
 * COPY with --chown, an archive may land where its owner could not write. Every path-based call is
 * synchronous on the main thread and file data goes through an fd, the rule as-user.ts explains.
 */
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  chmodSync,
  statSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  write,
  type Stats,
} from 'node:fs'
import { posix } from 'node:path'
import { InvalidArgumentError } from '@sandcell/shared'
import type { Credentials } from '../filesystem/as-user.js'
import { fromNodeError } from '../filesystem/node-errors.js'
import { resolveInside, type ResolvedPath } from '../filesystem/resolve-inside.js'
import { describeEntry, type ArchiveEntry } from './archive-entry.js'

/** Where and as whom an archive is written. */
export interface ArchiveWriterOptions {
  /** The agent's root (a host path, symlink-free). */
  root: string
  /** The destination, an absolute normalized sandbox path; created with its missing parents. */
  destination: string
  /** Owner of everything written, missing parents included. */
  owner: Credentials
  /** Permission bits for the archive's files and directories instead of their headers'. */
  mode: number | undefined
}

/** What an extraction wrote: `POST /archive`'s answer. */
export interface ArchiveResult {
  entries: number
  bytes: number
}

/** Writes entries in archive order; not for concurrent use. */
export interface ArchiveWriter {
  /**
   * Writes one entry; `data` is its content (read only for a regular file).
   * @throws SandcellError naming the entry: 400 for an entry that breaks a rule, else the file
   *   error (403, 507 when the disk is full…). Nothing is written for a rejected entry.
   */
  write(entry: ArchiveEntry, data: AsyncIterable<Uint8Array>): Promise<void>
  /** Sets the directories' times (their entries changed them) and returns the totals. */
  finish(): ArchiveResult
}

/** Mode of directories the archive implies but does not list, and of the destination's parents. */
const impliedDirectoryMode = 0o755

/** New files start private: owner and mode are set on the fd before anything is visible. */
const newFileFlags =
  constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW

/**
 * Creates the destination (and its missing parents, owned by the owner) and returns the writer.
 * A destination that is a symlink is followed, like `/files` does.
 * @throws InvalidArgumentError when the destination is not a directory, else the file error.
 */
export function createArchiveWriter(options: ArchiveWriterOptions): ArchiveWriter {
  const { root, owner } = options
  const rootPrefix = root === '/' ? '' : root
  /** Sandbox paths of the symlinks this archive made: later entries never go through them. */
  const ownLinks = new Set<string>()
  /** Host paths of this archive's regular files by normalized name, for its hard links. */
  const files = new Map<string, string>()
  /** Host paths known to be directories (made or checked), so each is checked once. */
  const directories = new Set<string>()
  const directoryTimes: { hostPath: string; mtime: Date }[] = []
  let entries = 0
  let bytes = 0

  /**
   * Creates each missing directory of `sandboxPath` (all of it, or all but the last part);
   * `name` is the entry's, undefined for the destination.
   */
  const makeDirectories = (sandboxPath: string, includeLast: boolean, name?: string): void => {
    const parts = sandboxPath.split('/').filter((part) => part !== '')
    if (!includeLast) {
      parts.pop()
    }
    let hostPath = rootPrefix
    let prefix = ''
    for (const part of parts) {
      hostPath = `${hostPath}/${part}`
      prefix = `${prefix}/${part}`
      if (directories.has(hostPath)) {
        continue
      }
      const stats = lstatOrUndefined(hostPath)
      if (stats === undefined) {
        mkdirSync(hostPath)
        lchownSync(hostPath, owner.uid, owner.gid)
        chmodSync(hostPath, impliedDirectoryMode)
      } else if (!stats.isDirectory()) {
        const what = name === undefined ? `cannot extract into ${sandboxPath}` : describeEntry(name)
        throw new InvalidArgumentError(`${what}: ${prefix} exists and is not a directory`)
      }
      directories.add(hostPath)
    }
  }

  /** Refuses to go through a symlink this archive made (its target is the archive's choice). */
  const refuseOwnLinks =
    (name: string) =>
    (link: ResolvedPath): void => {
      if (ownLinks.has(link.sandboxPath)) {
        throw new InvalidArgumentError(
          `${describeEntry(name)} is below ${link.sandboxPath}, a symlink of this archive; a later entry cannot be written through it`,
        )
      }
    }

  const destination = translate(options.destination, () => {
    const resolved = resolveInside(root, options.destination)
    makeDirectories(resolved.sandboxPath, true)
    return resolved
  })

  /** Makes room for a non-directory at `hostPath`: removes a file or symlink, refuses a directory. */
  const clearForNonDirectory = (entry: ArchiveEntry, target: ResolvedPath): void => {
    const existing = lstatOrUndefined(target.hostPath)
    if (existing?.isDirectory() === true) {
      throw new InvalidArgumentError(
        `${describeEntry(entry.name)}: ${target.sandboxPath} is a directory and cannot be replaced by a ${entry.kind}`,
      )
    }
    if (existing !== undefined) {
      unlinkSync(target.hostPath)
      ownLinks.delete(target.sandboxPath)
    }
  }

  const writeDirectory = (entry: ArchiveEntry, target: ResolvedPath): void => {
    let directory = target
    const existing = lstatOrUndefined(target.hostPath)
    if (existing?.isSymbolicLink() === true && !ownLinks.has(target.sandboxPath)) {
      // A symlink that was there before (Debian's /lib -> usr/lib): merge into what it points
      // at, like cp and BuildKit, rather than replace a system's layout.
      const followed = resolveInside(root, target.sandboxPath, {
        beforeFollow: refuseOwnLinks(entry.name),
      })
      if (statOrUndefined(followed.hostPath)?.isDirectory() === true) {
        directory = followed
      }
    }
    if (directory === target && existing?.isDirectory() !== true) {
      if (existing !== undefined) {
        unlinkSync(target.hostPath)
        ownLinks.delete(target.sandboxPath)
      }
      mkdirSync(target.hostPath)
    }
    lchownSync(directory.hostPath, owner.uid, owner.gid)
    chmodSync(directory.hostPath, options.mode ?? entry.mode)
    directories.add(directory.hostPath)
    directoryTimes.push({ hostPath: directory.hostPath, mtime: entry.mtime })
  }

  const writeFile = async (
    entry: ArchiveEntry,
    target: ResolvedPath,
    data: AsyncIterable<Uint8Array>,
  ): Promise<void> => {
    clearForNonDirectory(entry, target)
    const fd = openSync(target.hostPath, newFileFlags, 0o600)
    try {
      fchownSync(fd, owner.uid, owner.gid)
      for await (const chunk of data) {
        await writeAll(fd, chunk)
        bytes += chunk.byteLength
      }
      // After chown, which clears setuid and setgid bits.
      fchmodSync(fd, options.mode ?? entry.mode)
      futimesSync(fd, entry.mtime, entry.mtime)
    } finally {
      closeSync(fd)
    }
  }

  const writeSymlink = (
    entry: Extract<ArchiveEntry, { kind: 'symlink' }>,
    target: ResolvedPath,
  ): void => {
    clearForNonDirectory(entry, target)
    symlinkSync(entry.target, target.hostPath)
    ownLinks.add(target.sandboxPath)
    lchownSync(target.hostPath, owner.uid, owner.gid)
    lutimesSync(target.hostPath, entry.mtime, entry.mtime)
  }

  const writeHardLink = (
    entry: Extract<ArchiveEntry, { kind: 'hardlink' }>,
    target: ResolvedPath,
  ): void => {
    const linked = files.get(entry.target.join('/'))
    if (linked === undefined || lstatOrUndefined(linked)?.isFile() !== true) {
      throw new InvalidArgumentError(
        `${describeEntry(entry.name)} is a hard link to ${JSON.stringify(entry.target.join('/'))}, which is not an earlier regular file of this archive`,
      )
    }
    if (linked === target.hostPath) {
      return
    }
    clearForNonDirectory(entry, target)
    linkSync(linked, target.hostPath)
  }

  return {
    async write(entry, data) {
      if (entry.parts.length === 0) {
        // `./`: the destination itself, which keeps its owner and mode (it may be `/`).
        return
      }
      const key = entry.parts.join('/')
      const sandboxPath = posix.join(destination.sandboxPath, ...entry.parts)
      await translateAsync(sandboxPath, async () => {
        const target = resolveInside(root, sandboxPath, {
          followFinal: false,
          beforeFollow: refuseOwnLinks(entry.name),
        })
        makeDirectories(target.sandboxPath, false, entry.name)
        switch (entry.kind) {
          case 'directory':
            writeDirectory(entry, target)
            files.delete(key)
            break
          case 'file':
            await writeFile(entry, target, data)
            files.set(key, target.hostPath)
            break
          case 'symlink':
            writeSymlink(entry, target)
            files.delete(key)
            break
          case 'hardlink':
            writeHardLink(entry, target)
            files.set(key, target.hostPath)
            break
        }
      })
      entries += 1
    },
    finish() {
      translate(destination.sandboxPath, () => {
        for (const { hostPath, mtime } of directoryTimes) {
          utimesSync(hostPath, mtime, mtime)
        }
      })
      return { entries, bytes }
    },
  }
}

/** Runs `step`, turning a Node error into the sandcell error naming `path`. */
function translate<T>(path: string, step: () => T): T {
  try {
    return step()
  } catch (err) {
    throw fromNodeError(err, { op: 'extract to', path })
  }
}

async function translateAsync(path: string, step: () => Promise<void>): Promise<void> {
  try {
    await step()
  } catch (err) {
    throw fromNodeError(err, { op: 'extract to', path })
  }
}

function lstatOrUndefined(hostPath: string): Stats | undefined {
  try {
    return lstatSync(hostPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return undefined
    }
    throw err
  }
}

function statOrUndefined(hostPath: string): Stats | undefined {
  try {
    return statSync(hostPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return undefined
    }
    throw err
  }
}

/** Writes all of `chunk` at the fd's offset (a write may take only part of it). */
async function writeAll(fd: number, chunk: Uint8Array): Promise<void> {
  let offset = 0
  while (offset < chunk.byteLength) {
    offset += await new Promise<number>((resolve, reject) => {
      write(fd, chunk, offset, chunk.byteLength - offset, null, (err, written) => {
        if (err === null) {
          resolve(written)
        } else {
          reject(err)
        }
      })
    })
  }
}
