/**
 * Runs a synchronous file-system step with the effective uid/gid of a sandbox user, so the kernel
 * enforces that user's permissions and new files belong to them.
 *
 * Why this is safe in a multi-threaded Node process: glibc's seteuid/setegid change the
 * credentials of every thread (the setxid broadcast), so a libuv threadpool thread that runs a
 * *path-based* call (open, stat, mkdir…) while a bracket is active would run it as the bracket's
 * user. The agent therefore keeps one rule: every path-based file operation on behalf of a request
 * is a synchronous call made inside a bracket on the main thread, and the bracket never spans an
 * `await` (enforced below: a callback that returns a promise is a bug). The only file work left
 * to the threadpool is fd-based (read/write on an fd opened inside a bracket), where the kernel
 * checked permissions at open time and does not look at credentials again. Logging writes to fd 2
 * the same way. Module loading (`import()` of lazy chunks) may read a chunk file on the
 * threadpool during a bracket; the build makes the agent's directory world-readable (inside a
 * sandbox the agent itself can only read it through the "other" bits too), so such a read
 * succeeds whichever credentials are active.
 */
import { BugError, PermissionDeniedError } from '@sandcell/shared'

/** The ids a bracket switches to. */
export interface Credentials {
  uid: number
  gid: number
}

let active: Credentials | undefined

/**
 * Calls `step` with effective uid/gid = `creds` and restores the previous ones afterwards, even
 * when `step` throws. A no-op switch when the agent already has these ids.
 * @throws PermissionDeniedError when the agent cannot switch (it does not run as root).
 * @throws BugError when `step` is async or brackets are nested with different ids.
 */
export function runAs<T>(creds: Credentials, step: () => T): T {
  const euid = process.geteuid?.()
  const egid = process.getegid?.()
  if (
    euid === undefined ||
    egid === undefined ||
    process.seteuid === undefined ||
    process.setegid === undefined
  ) {
    throw new BugError('credential switching needs a POSIX main thread')
  }
  if (creds.uid === euid && creds.gid === egid) {
    return checkSync(step())
  }
  if (active !== undefined) {
    throw new BugError(
      `nested credential brackets (${active.uid}:${active.gid} then ${creds.uid}:${creds.gid})`,
    )
  }
  if (euid !== 0) {
    throw new PermissionDeniedError(
      `the agent runs as uid ${euid} and cannot act as uid ${creds.uid}; run it as root`,
    )
  }
  // Group first: changing the uid away from 0 drops the capability needed to change the group.
  process.setegid(creds.gid)
  try {
    process.seteuid(creds.uid)
  } catch (err) {
    process.setegid(egid)
    throw err
  }
  active = creds
  try {
    return checkSync(step())
  } finally {
    active = undefined
    // Back to uid 0 first: that restores the capabilities the group change needs.
    process.seteuid(euid)
    process.setegid(egid)
  }
}

function checkSync<T>(value: T): T {
  if (typeof (value as { then?: unknown } | null)?.then === 'function') {
    throw new BugError('runAs step returned a promise: a bracket must not span an await')
  }
  return value
}
