/** Watchers created by CreateWatcher whose events a client collects with GetWatcherEvents. */
import { randomUUID } from 'node:crypto'
import type { MessageInitShape } from '@bufbuild/protobuf'
import type { FilesystemEventSchema } from '@sandcell/protocol'
import { NotFoundError, type Logger } from '@sandcell/shared'
import type { DirectoryWatchHandle } from './watcher.js'

type FilesystemEventInit = MessageInitShape<typeof FilesystemEventSchema>

/** Most events a polled watcher holds between two GetWatcherEvents; older ones are dropped. */
export const maxPolledEvents = 10_000

interface PolledWatcher {
  handle: DirectoryWatchHandle
  events: FilesystemEventInit[]
  dropped: number
}

/** The registry of polled watchers; `closeAll` stops every one (agent shutdown). */
export class PolledWatchers {
  readonly #watchers = new Map<string, PolledWatcher>()
  readonly #log: Logger

  constructor(log: Logger) {
    this.#log = log
  }

  /**
   * Registers a watch started by `start`, which receives the function to deliver its events to.
   * Returns the watcher id.
   */
  add(start: (deliver: (event: FilesystemEventInit) => void) => DirectoryWatchHandle): string {
    const id = randomUUID()
    const deliver = (event: FilesystemEventInit): void => {
      const watcher = this.#watchers.get(id)
      if (watcher === undefined) {
        return
      }
      if (watcher.events.length >= maxPolledEvents) {
        watcher.events.shift()
        watcher.dropped += 1
      }
      watcher.events.push(event)
    }
    // Registered before start so that events from the first scan are kept.
    this.#watchers.set(id, { handle: { close: () => undefined }, events: [], dropped: 0 })
    try {
      const handle = start(deliver)
      const watcher = this.#watchers.get(id) as PolledWatcher
      watcher.handle = handle
    } catch (err) {
      this.#watchers.delete(id)
      throw err
    }
    return id
  }

  /**
   * Takes the events collected since the last call.
   * @throws NotFoundError for an unknown id.
   */
  take(id: string): FilesystemEventInit[] {
    const watcher = this.#get(id)
    if (watcher.dropped > 0) {
      this.#log.warn({ watcherId: id, dropped: watcher.dropped }, 'polled watcher dropped events')
      watcher.dropped = 0
    }
    return watcher.events.splice(0)
  }

  /**
   * Stops and forgets a watcher.
   * @throws NotFoundError for an unknown id.
   */
  remove(id: string): void {
    const watcher = this.#get(id)
    watcher.handle.close()
    this.#watchers.delete(id)
  }

  closeAll(): void {
    for (const watcher of this.#watchers.values()) {
      watcher.handle.close()
    }
    this.#watchers.clear()
  }

  #get(id: string): PolledWatcher {
    const watcher = this.#watchers.get(id)
    if (watcher === undefined) {
      throw new NotFoundError(`watcher ${JSON.stringify(id)} does not exist or was removed`, {
        details: { watcherId: id },
      })
    }
    return watcher
  }
}
