/**
 * Directory watching with envd's event kinds (create, write, remove, rename, chmod) on top of
 * Node's fs.watch, which only says "rename" or "change".
 *
 * Each watched directory keeps a snapshot of its entries (inode, mode, size, mtime). A "rename"
 * for a name is a create when the name appeared, and a removal when it vanished; a vanished entry
 * whose inode reappears under another watched name in the same inotify batch was renamed (envd
 * reports the old name as RENAME and the new one as CREATE, like fsnotify). Events of one batch
 * are buffered and emitted in order on the next macrotask, when every half of a rename has
 * arrived. Known difference from envd: a file moved *out of* the watched tree is reported as
 * REMOVE (inotify's cookie is not visible through fs.watch). "change" is CHMOD when mode or
 * owner changed, else WRITE. Recursive watches add one fs.watch per subdirectory.
 */
import { lstatSync, readdirSync, watch, type BigIntStats, type FSWatcher } from 'node:fs'
import { join } from 'node:path'
import { EventType } from '@sandcell/protocol'
import { ResourceExhaustedError, errorMessage, type Logger } from '@sandcell/shared'
import { runAs, type Credentials } from './as-user.js'

/** One event, with the name relative to the watched directory ("sub/file.txt"). */
export interface WatchEvent {
  name: string
  type: EventType
}

/** Options for {@link watchDirectory}. */
export interface WatchDirectoryOptions {
  /** Host path of the directory (resolved, must exist and be a directory). */
  hostPath: string
  recursive: boolean
  /** Whose permissions the watch and its stats use. */
  creds: Credentials
  /** Receives events in order; must not throw. */
  onEvent: (event: WatchEvent) => void
  /** Called once when the watched directory itself goes away or watching fails. */
  onEnd: (error?: Error) => void
  log: Logger
  /** Most directories one recursive watch may hold. @default 10000 */
  maxDirectories?: number
}

/** A running watch; `close()` is idempotent. */
export interface DirectoryWatchHandle {
  close(): void
}

interface EntrySnapshot {
  ino: bigint
  mode: bigint
  uid: bigint
  gid: bigint
  size: bigint
  mtimeNs: bigint
  isDirectory: boolean
}

interface WatchedDirectory {
  hostPath: string
  /** Prefix of event names for entries of this directory ("" or "sub/"). */
  prefix: string
  ino: bigint
  watcher: FSWatcher
  entries: Map<string, EntrySnapshot | 'ghost'>
}

type PendingEvent =
  { kind: 'event'; event: WatchEvent } | { kind: 'vanished'; name: string; ino: bigint }

/**
 * Starts watching. The initial fs.watch calls and directory scans run synchronously in a runAs
 * bracket, so the watch sees only what the user may see.
 * @throws the Node error of the first fs.watch (EACCES, ENOENT…), or ResourceExhaustedError
 *   when a recursive watch would need more than `maxDirectories` watches.
 */
export function watchDirectory(options: WatchDirectoryOptions): DirectoryWatchHandle {
  const { creds, log } = options
  const maxDirectories = options.maxDirectories ?? 10_000
  const directories = new Map<string, WatchedDirectory>()
  let pending: PendingEvent[] = []
  let appearedInodes = new Set<bigint>()
  let vanishedInodes = new Set<bigint>()
  let flushScheduled = false
  let ending = false
  let closed = false

  const lstatOrUndefined = (path: string): BigIntStats | undefined => {
    try {
      return lstatSync(path, { bigint: true })
    } catch {
      return undefined
    }
  }
  const snapshotOf = (stats: BigIntStats): EntrySnapshot => ({
    ino: stats.ino,
    mode: stats.mode,
    uid: stats.uid,
    gid: stats.gid,
    size: stats.size,
    mtimeNs: stats.mtimeNs,
    isDirectory: stats.isDirectory(),
  })

  const queue = (item: PendingEvent): void => {
    pending.push(item)
    if (!flushScheduled) {
      flushScheduled = true
      setImmediate(flush)
    }
  }
  const flush = (): void => {
    flushScheduled = false
    const batch = pending
    const appeared = appearedInodes
    pending = []
    appearedInodes = new Set()
    vanishedInodes = new Set()
    for (const item of batch) {
      if (closed) {
        return
      }
      options.onEvent(
        item.kind === 'event'
          ? item.event
          : {
              name: item.name,
              type: appeared.has(item.ino) ? EventType.RENAME : EventType.REMOVE,
            },
      )
    }
  }

  /** Watches one directory (and, when recursive, its subdirectories). Call inside runAs. */
  const addDirectory = (hostPath: string, prefix: string, announceEntries: boolean): void => {
    if (directories.has(hostPath) || closed) {
      return
    }
    if (directories.size >= maxDirectories) {
      throw new ResourceExhaustedError(
        `watching more than ${maxDirectories} directories is not supported; watch a smaller tree`,
      )
    }
    const stats = lstatSync(hostPath, { bigint: true })
    const watcher = watch(hostPath, { persistent: true }, (eventType, filename) => {
      try {
        runAs(creds, () => onChange(directory, eventType, filename))
      } catch (err) {
        log.warn({ err, path: hostPath }, 'watch event handling failed')
      }
    })
    const directory: WatchedDirectory = {
      hostPath,
      prefix,
      ino: stats.ino,
      watcher,
      entries: new Map(),
    }
    watcher.on('error', (err) => {
      log.debug({ err, path: hostPath }, 'directory watcher failed')
      removeDirectory(hostPath)
      if (prefix === '') {
        end(err)
      }
    })
    directories.set(hostPath, directory)
    let names: string[]
    try {
      names = readdirSync(hostPath)
    } catch (err) {
      log.debug({ err, path: hostPath }, 'cannot list watched directory')
      names = []
    }
    for (const name of names.sort()) {
      const entryStats = lstatOrUndefined(join(hostPath, name))
      if (entryStats === undefined) {
        continue
      }
      const snapshot = snapshotOf(entryStats)
      directory.entries.set(name, snapshot)
      if (announceEntries) {
        queue({ kind: 'event', event: { name: prefix + name, type: EventType.CREATE } })
      }
      if (options.recursive && snapshot.isDirectory) {
        addDirectory(join(hostPath, name), `${prefix}${name}/`, announceEntries)
      }
    }
  }

  const removeDirectory = (hostPath: string): void => {
    for (const [path, directory] of directories) {
      if (path === hostPath || path.startsWith(`${hostPath}/`)) {
        directory.watcher.close()
        directories.delete(path)
      }
    }
  }

  const onChange = (
    directory: WatchedDirectory,
    eventType: string,
    filename: string | Buffer | null,
  ): void => {
    if (closed || directories.get(directory.hostPath) !== directory) {
      return
    }
    const self = lstatOrUndefined(directory.hostPath)
    if (self === undefined || self.ino !== directory.ino) {
      // The watched directory itself was removed or replaced.
      removeDirectory(directory.hostPath)
      if (directory.prefix === '') {
        end()
      }
      return
    }
    if (filename === null) {
      rescan(directory)
      return
    }
    const name = filename.toString()
    const previous = directory.entries.get(name)
    const current = lstatOrUndefined(join(directory.hostPath, name))
    const eventName = directory.prefix + name
    if (eventType === 'change') {
      if (current === undefined || previous === 'ghost') {
        return
      }
      const changedOwnerOrMode =
        previous !== undefined &&
        (current.mode !== previous.mode ||
          current.uid !== previous.uid ||
          current.gid !== previous.gid)
      directory.entries.set(name, snapshotOf(current))
      queue({
        kind: 'event',
        event: { name: eventName, type: changedOwnerOrMode ? EventType.CHMOD : EventType.WRITE },
      })
      return
    }
    // eventType === 'rename': the name appeared, vanished or was replaced.
    if (current !== undefined) {
      if (previous !== undefined && previous !== 'ghost' && previous.ino === current.ino) {
        return
      }
      if (previous !== undefined && previous !== 'ghost') {
        // Replaced by another inode (renamed over it): the old one is gone.
        if (previous.isDirectory) {
          removeDirectory(join(directory.hostPath, name))
        }
      }
      const snapshot = snapshotOf(current)
      directory.entries.set(name, snapshot)
      appearedInodes.add(snapshot.ino)
      queue({ kind: 'event', event: { name: eventName, type: EventType.CREATE } })
      if (options.recursive && snapshot.isDirectory) {
        try {
          // A directory moved within the tree brings its entries along silently; a new one may
          // already hold entries created before this watch existed, so announce those.
          const moved = vanishedInodes.has(snapshot.ino)
          addDirectory(join(directory.hostPath, name), `${eventName}/`, !moved)
        } catch (err) {
          log.warn({ err: errorMessage(err), path: eventName }, 'cannot watch new subdirectory')
        }
      }
      return
    }
    if (previous === undefined) {
      // Created and gone before we looked: report both halves, like inotify would.
      directory.entries.set(name, 'ghost')
      queue({ kind: 'event', event: { name: eventName, type: EventType.CREATE } })
      return
    }
    directory.entries.delete(name)
    if (previous === 'ghost') {
      queue({ kind: 'event', event: { name: eventName, type: EventType.REMOVE } })
      return
    }
    if (previous.isDirectory) {
      removeDirectory(join(directory.hostPath, name))
    }
    vanishedInodes.add(previous.ino)
    queue({ kind: 'vanished', name: eventName, ino: previous.ino })
  }

  /** Without a file name (rare), diff the whole directory against the snapshot. */
  const rescan = (directory: WatchedDirectory): void => {
    let names: Set<string>
    try {
      names = new Set(readdirSync(directory.hostPath))
    } catch {
      return
    }
    for (const name of new Set([...names, ...directory.entries.keys()])) {
      onChange(directory, 'rename', name)
    }
  }

  const end = (error?: Error): void => {
    if (closed || ending) {
      return
    }
    ending = true
    // On the next macrotask (outside any credential bracket): deliver what is buffered, then end.
    setImmediate(() => {
      if (closed) {
        return
      }
      flush()
      close()
      options.onEnd(error)
    })
  }

  const close = (): void => {
    if (closed) {
      return
    }
    closed = true
    for (const directory of directories.values()) {
      directory.watcher.close()
    }
    directories.clear()
  }

  runAs(creds, () => {
    try {
      addDirectory(options.hostPath, '', false)
    } catch (err) {
      close()
      throw err
    }
  })
  return { close }
}
