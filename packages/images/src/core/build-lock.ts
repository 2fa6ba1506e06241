/**
 * A cross-process build lock: one builder of a template or artifact at a time, across every
 * process on the host, with holders that died detected and replaced.
 */
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { link, mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { dirname } from 'node:path'
import {
  DriverError,
  delay,
  errorMessage,
  type Logger,
  isProcessAlive,
  processStartTime,
} from '@sandcell/shared'

/** Who holds (or last held) a build lock, as written into the lock file. */
export interface BuildLockOwner {
  pid: number
  /** The pid's start time in clock ticks, so a recycled pid is not mistaken for the owner. */
  startTime?: number
  hostname: string
  acquiredAt: string
  /** Unique per acquisition: tells this holder's file from a later one by the same process. */
  token: string
}

/** A held build lock; releasing it lets the next builder in. */
export interface BuildLock extends AsyncDisposable {
  readonly path: string
  readonly owner: BuildLockOwner
  /**
   * Confirms the lock file is still this holder's. Call it before an irreversible step (the
   * commit rename): a builder that misjudged this one as dead may have taken over.
   * @throws DriverError when another builder holds it now
   */
  assertHeld(): Promise<void>
  /** Removes the lock file if it is still this holder's. Idempotent. */
  release(): Promise<void>
}

export interface AcquireBuildLockOptions {
  signal?: AbortSignal
  /**
   * Called once when the lock is busy and the caller starts waiting, with who holds it
   * (undefined when its holder cannot be checked, e.g. a builder on another host).
   */
  onWait?: (owner: BuildLockOwner | undefined) => void
  log: Logger
}

// Waits poll the lock file: quickly at first (the base template builds in milliseconds), then
// backing off for the minute a Debian build takes.
const firstPollMs = 10
const maxPollMs = 250

/**
 * Takes the exclusive build lock at `lockPath`, waiting while another live builder (in this
 * process or another) holds it. The lock is a file naming its holder (pid, the pid's start time,
 * host); a holder that died leaves it behind, and the next builder removes it once it finds
 * that pid gone (or recycled). No helper process is spawned: taking a free lock costs well under
 * a millisecond, which keeps the base template's first build within its budget.
 *
 * The file is created complete and atomically with link(2) from a private temporary file (an
 * `open(..., 'wx')` followed by a write would let a reader see it empty). A stale file is moved
 * aside by rename(2) and deleted only if it is still the stale one that was judged; if a live
 * holder's file was moved by mistake it is linked back.
 *
 * @throws the signal's reason when aborted while waiting
 */
export async function acquireBuildLock(
  lockPath: string,
  options: AcquireBuildLockOptions,
): Promise<BuildLock> {
  const { signal, log } = options
  signal?.throwIfAborted()
  await mkdir(dirname(lockPath), { recursive: true })
  const owner: BuildLockOwner = {
    pid: process.pid,
    ...optionalStartTime(process.pid),
    hostname: hostname(),
    acquiredAt: new Date().toISOString(),
    token: randomUUID(),
  }
  const content = `${JSON.stringify(owner)}\n`
  let waiting = false
  let pollMs = firstPollMs
  while (!(await tryCreateLock(lockPath, content, owner.token))) {
    const current = readLockFile(lockPath)
    if (current === undefined) {
      continue // released between our attempt and our look: try again at once
    }
    if (isStale(current.owner)) {
      log.warn({ lockPath, owner: current.owner }, 'removing a stale template build lock')
      await breakStaleLock(lockPath, current.text, log)
      continue
    }
    if (!waiting) {
      waiting = true
      log.info({ lockPath, owner: current.owner }, 'waiting for another template build')
      options.onWait?.(current.owner?.hostname === hostname() ? current.owner : undefined)
    }
    await delay(pollMs, signal)
    pollMs = Math.min(pollMs * 2, maxPollMs)
  }
  const isOurs = (): boolean => readLockFile(lockPath)?.text === content
  let released = false
  const release = async (): Promise<void> => {
    if (released) {
      return
    }
    released = true
    if (isOurs()) {
      await rm(lockPath, { force: true })
    } else {
      log.warn({ lockPath }, 'build lock was taken over by another builder; leaving it')
    }
  }
  return {
    path: lockPath,
    owner,
    assertHeld() {
      if (released || !isOurs()) {
        return Promise.reject(
          new DriverError(
            `lost the template build lock ${lockPath}: another builder took over; retry`,
            { details: { lockPath } },
          ),
        )
      }
      return Promise.resolve()
    },
    release,
    [Symbol.asyncDispose]: release,
  }
}

function optionalStartTime(pid: number): { startTime?: number } {
  const startTime = processStartTime(pid)
  return startTime === undefined ? {} : { startTime }
}

/** Creates the lock file with its full content in one step; false when it exists. */
async function tryCreateLock(lockPath: string, content: string, token: string): Promise<boolean> {
  const temporary = `${lockPath}.${token}`
  await writeFile(temporary, content, { mode: 0o644 })
  try {
    await link(temporary, lockPath)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      return false
    }
    throw new DriverError(`cannot create the build lock ${lockPath}: ${errorMessage(err)}`, {
      cause: err,
    })
  } finally {
    await rm(temporary, { force: true })
  }
}

/** Whether a lock's holder is certainly gone: same host, and its pid dead or recycled. */
function isStale(owner: BuildLockOwner | undefined): boolean {
  if (owner === undefined) {
    // Not a file this code wrote complete (link() makes them whole): nobody can hold it.
    return true
  }
  if (owner.hostname !== hostname()) {
    return false
  }
  if (owner.startTime !== undefined) {
    return !isProcessAlive(owner.pid, owner.startTime)
  }
  try {
    process.kill(owner.pid, 0)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH'
  }
}

/** Removes the lock file only if it still holds `staleText`. */
async function breakStaleLock(lockPath: string, staleText: string, log: Logger): Promise<void> {
  const aside = `${lockPath}.stale-${randomUUID()}`
  try {
    await rename(lockPath, aside)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return // another waiter removed it first
    }
    throw err
  }
  const moved = readFileOrUndefined(aside)
  if (moved !== staleText) {
    // Another waiter broke the stale lock and a live builder took it between our read and the
    // rename: give it back. If a third one slipped in meanwhile, the displaced holder finds out
    // in assertHeld() before committing anything.
    try {
      await link(aside, lockPath)
    } catch (err) {
      log.error({ err, lockPath }, 'could not restore a live build lock moved by mistake')
    }
  }
  await rm(aside, { force: true })
}

function readFileOrUndefined(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

/** The lock file's text and parsed owner, or undefined when there is no lock file. */
function readLockFile(
  lockPath: string,
): { text: string; owner: BuildLockOwner | undefined } | undefined {
  const text = readFileOrUndefined(lockPath)
  return text === undefined ? undefined : { text, owner: parseLockOwner(text) }
}

/** The owner recorded in a lock file, or undefined when there is none or it is not readable. */
export function readLockOwner(lockPath: string): BuildLockOwner | undefined {
  return readLockFile(lockPath)?.owner
}

function parseLockOwner(text: string): BuildLockOwner | undefined {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof parsed !== 'object' || parsed === null) {
    return undefined
  }
  const { pid, startTime, hostname: host, acquiredAt, token } = parsed as Record<string, unknown>
  if (
    typeof pid !== 'number' ||
    !Number.isInteger(pid) ||
    pid <= 0 ||
    typeof host !== 'string' ||
    typeof acquiredAt !== 'string' ||
    typeof token !== 'string'
  ) {
    return undefined
  }
  return {
    pid,
    ...(typeof startTime === 'number' ? { startTime } : {}),
    hostname: host,
    acquiredAt,
    token,
  }
}
