/** Builds envd's EntryInfo (name, type, size, mode, owner…) for a path, as the SDK shows it. */
import { lstatSync, readlinkSync, statSync, type BigIntStats } from 'node:fs'
import { posix } from 'node:path'
import type { MessageInitShape } from '@bufbuild/protobuf'
import { FileType, type EntryInfoSchema } from '@sandcell/protocol'
import type { UserDirectory } from '../process/users.js'
import { readMetadata } from './file-metadata.js'
import { formatPermissions } from './permissions-string.js'
import { resolveInside, type ResolvedPath } from './resolve-inside.js'

/** The wire EntryInfo as handlers return it. */
export type EntryInfoInit = MessageInitShape<typeof EntryInfoSchema>

/** What describing an entry needs: the root (to resolve link targets) and user names. */
export interface EntryInfoContext {
  root: string
  users: UserDirectory
}

/**
 * Describes the entry at `path` without following a final symlink (lstat). For a symlink, like
 * envd: `type` and `mode` are the target's, `symlinkTarget` is the target's resolved sandbox path,
 * `permissions` is the link's own (`lrwxrwxrwx`) and `metadata` is the target's (a link has no
 * user xattrs of its own). A dangling link has type SYMLINK so that it still shows up in the SDK
 * (which drops entries of unknown type). Call inside a runAs bracket.
 * @throws the Node error of the lstat (ENOENT…), for the caller to translate.
 */
export function describeEntry(context: EntryInfoContext, path: ResolvedPath): EntryInfoInit {
  const stats = lstatSync(path.hostPath, { bigint: true })
  return describeStats(context, path, stats)
}

/** Like {@link describeEntry} with the lstat already done (directory walks have it). */
export function describeStats(
  context: EntryInfoContext,
  path: ResolvedPath,
  stats: BigIntStats,
): EntryInfoInit {
  let type = fileTypeOf(stats)
  let mode = Number(stats.mode) & 0o777
  let symlinkTarget: string | undefined
  let metadataHostPath: string | undefined = path.hostPath
  if (stats.isSymbolicLink()) {
    type = FileType.SYMLINK
    metadataHostPath = undefined
    try {
      const target = resolveInside(context.root, path.sandboxPath)
      symlinkTarget = target.sandboxPath
      const targetStats = statSync(target.hostPath, { bigint: true })
      type = fileTypeOf(targetStats)
      mode = Number(targetStats.mode) & 0o777
      // Read through the resolved path, never by following the link again (see readMetadata).
      metadataHostPath = target.hostPath
    } catch {
      // Dangling, looping or escaping: report the link as written and keep type SYMLINK.
      symlinkTarget ??= safeReadlink(path.hostPath)
    }
  }
  const metadata = metadataHostPath === undefined ? undefined : readMetadata(metadataHostPath)
  return {
    name: path.sandboxPath === '/' ? '/' : posix.basename(path.sandboxPath),
    type,
    path: path.sandboxPath,
    size: stats.size,
    mode,
    permissions: formatPermissions(Number(stats.mode)),
    owner: context.users.userName(Number(stats.uid)),
    group: context.users.groupName(Number(stats.gid)),
    modifiedTime: {
      seconds: stats.mtimeNs / 1_000_000_000n,
      nanos: Number(stats.mtimeNs % 1_000_000_000n),
    },
    ...(symlinkTarget === undefined ? {} : { symlinkTarget }),
    ...(metadata === undefined ? {} : { metadata }),
  }
}

function fileTypeOf(stats: BigIntStats): FileType {
  if (stats.isDirectory()) {
    return FileType.DIRECTORY
  }
  if (stats.isSymbolicLink()) {
    return FileType.SYMLINK
  }
  // envd reports sockets, fifos and devices as files too: they can be opened by path.
  return FileType.FILE
}

function safeReadlink(hostPath: string): string | undefined {
  try {
    return readlinkSync(hostPath)
  } catch {
    return undefined
  }
}
