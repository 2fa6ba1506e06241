/** envd's filesystem.Filesystem service: stat, mkdir, move, list, remove and directory watches. */
import type { MessageInitShape } from '@bufbuild/protobuf'
import type { HandlerContext, ServiceImpl } from '@connectrpc/connect'
import {
  EventType,
  usernameFromAuthorization,
  type Filesystem,
  type FilesystemEventSchema,
  type WatchDirResponseSchema,
} from '@sandcell/protocol'
import { InvalidArgumentError, ResourceExhaustedError } from '@sandcell/shared'
import type { AgentContext } from '../agent-context.js'
import { AsyncQueue, keepaliveIntervalMs, withKeepalive } from '../async-queue.js'
import type { SandboxUser } from '../process/users.js'
import { resolveRequestUser } from '../request-user.js'
import { describeEntry } from './entry-info.js'
import {
  asUser,
  listDirectory,
  makeDirectory,
  movePath,
  removePath,
  requireDirectory,
  resolvePath,
  statPath,
  type FileOperationContext,
} from './file-operations.js'
import { networkFilesystemOf } from './network-mounts.js'
import { fromNodeError } from './node-errors.js'
import type { PolledWatchers } from './polled-watchers.js'
import { requirePath } from './user-paths.js'
import { watchDirectory, type DirectoryWatchHandle, type WatchEvent } from './watcher.js'

type FilesystemEventInit = MessageInitShape<typeof FilesystemEventSchema>
type WatchDirResponseInit = MessageInitShape<typeof WatchDirResponseSchema>

/** Most unread events a WatchDir stream holds before it is ended as too slow. */
const maxUnreadWatchEvents = 10_000

/** Dependencies of {@link createFilesystemService}. */
export interface FilesystemServiceOptions {
  context: AgentContext
  watchers: PolledWatchers
}

/** Options shared by WatchDir and CreateWatcher. */
interface WatchRequest {
  path: string
  recursive: boolean
  includeEntry: boolean
  allowNetworkMounts: boolean
}

/** The Filesystem service; every operation runs with the requesting user's ids. */
export function createFilesystemService(
  options: FilesystemServiceOptions,
): ServiceImpl<typeof Filesystem> {
  const { context, watchers } = options
  const { state } = context

  const forRequest = (
    handler: HandlerContext,
  ): { user: SandboxUser; ops: FileOperationContext } => {
    const user = resolveRequestUser(
      context,
      usernameFromAuthorization(handler.requestHeader.get('authorization')),
    )
    return {
      user,
      ops: { root: context.root, users: context.users, creds: { uid: user.uid, gid: user.gid } },
    }
  }

  /** Starts a watch that delivers wire events; throws before anything is delivered. */
  const startWatch = (
    handler: HandlerContext,
    request: WatchRequest,
    deliver: (event: FilesystemEventInit) => void,
    onEnd: (error?: Error) => void,
  ): DirectoryWatchHandle => {
    const { user, ops } = forRequest(handler)
    const path = requirePath('path', request.path, user, state.defaultWorkdir)
    const resolved = asUser(ops, 'watch', path, () => {
      const target = resolvePath(ops, path)
      requireDirectory(target, path)
      const network = request.allowNetworkMounts ? undefined : networkFilesystemOf(target.hostPath)
      if (network !== undefined) {
        throw new InvalidArgumentError(
          `cannot watch ${path}: it is on a network file system (${network}), where changes made elsewhere are not seen; set allowNetworkMounts to watch it anyway`,
          { details: { path } },
        )
      }
      return target
    })
    const toWire = (event: WatchEvent): FilesystemEventInit => {
      if (
        !request.includeEntry ||
        event.type === EventType.REMOVE ||
        event.type === EventType.RENAME
      ) {
        return event
      }
      try {
        const entryPath = `${resolved.sandboxPath === '/' ? '' : resolved.sandboxPath}/${event.name}`
        const entry = asUser(ops, 'stat', entryPath, () =>
          describeEntry(ops, resolvePath(ops, entryPath, false)),
        )
        return { ...event, entry }
      } catch {
        return event // gone again already
      }
    }
    try {
      return watchDirectory({
        hostPath: resolved.hostPath,
        recursive: request.recursive,
        creds: ops.creds,
        log: context.log,
        onEvent: (event) => deliver(toWire(event)),
        onEnd: (error) =>
          onEnd(error === undefined ? undefined : fromNodeError(error, { op: 'watch', path })),
      })
    } catch (err) {
      throw fromNodeError(err, { op: 'watch', path })
    }
  }

  return {
    stat(request, handler) {
      const { user, ops } = forRequest(handler)
      const path = requirePath('path', request.path, user, state.defaultWorkdir)
      return { entry: statPath(ops, path) }
    },

    makeDir(request, handler) {
      const { user, ops } = forRequest(handler)
      const path = requirePath('path', request.path, user, state.defaultWorkdir)
      return { entry: makeDirectory(ops, path) }
    },

    move(request, handler) {
      const { user, ops } = forRequest(handler)
      const source = requirePath('source', request.source, user, state.defaultWorkdir)
      const destination = requirePath(
        'destination',
        request.destination,
        user,
        state.defaultWorkdir,
      )
      return { entry: movePath(ops, source, destination) }
    },

    listDir(request, handler) {
      const { user, ops } = forRequest(handler)
      const path = requirePath('path', request.path, user, state.defaultWorkdir)
      // envd treats depth 0 (unset) as 1.
      const depth = request.depth === 0 ? 1 : request.depth
      if (depth > 1024) {
        throw new InvalidArgumentError(`depth ${depth} is too large (at most 1024)`)
      }
      return { entries: listDirectory(ops, path, depth) }
    },

    async remove(request, handler) {
      const { user, ops } = forRequest(handler)
      const path = requirePath('path', request.path, user, state.defaultWorkdir)
      await removePath(ops, path)
      return {}
    },

    async *watchDir(request, handler) {
      const queue = new AsyncQueue<WatchDirResponseInit>({ maxItems: maxUnreadWatchEvents })
      const handle = startWatch(
        handler,
        request,
        (event) => {
          if (!queue.push({ event: { case: 'filesystem', value: event } })) {
            queue.abort(
              new ResourceExhaustedError(
                `the watch stream fell ${maxUnreadWatchEvents} events behind; read events faster or watch less`,
              ),
            )
            handle.close()
          }
        },
        (error) => queue.end(error),
      )
      const onAbort = (): void => {
        handle.close()
        queue.abort()
      }
      handler.signal.addEventListener('abort', onAbort, { once: true })
      try {
        yield { event: { case: 'start', value: {} } }
        yield* withKeepalive(
          queue,
          keepaliveIntervalMs(handler.requestHeader.get('keepalive-ping-interval')),
          () => ({ event: { case: 'keepalive', value: {} } }),
        )
      } finally {
        handler.signal.removeEventListener('abort', onAbort)
        handle.close()
      }
    },

    createWatcher(request, handler) {
      const watcherId = watchers.add((deliver) =>
        startWatch(handler, request, deliver, (error) => {
          if (error !== undefined) {
            context.log.debug({ err: error }, 'polled watch ended')
          }
        }),
      )
      return { watcherId }
    },

    getWatcherEvents(request) {
      return { events: watchers.take(requireWatcherId(request.watcherId)) }
    },

    removeWatcher(request) {
      watchers.remove(requireWatcherId(request.watcherId))
      return {}
    },
  }
}

function requireWatcherId(id: string): string {
  if (id === '') {
    throw new InvalidArgumentError('watcher_id is required')
  }
  return id
}
