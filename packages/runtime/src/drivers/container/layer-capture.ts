/**
 * A container sandbox's changes as an overlay layer: its upper directory (new and changed files,
 * whiteouts for deletions, opaque markers for replaced directories) copied out, so that the
 * template builder can stack it under later sandboxes. The sandbox must be paused meanwhile.
 */
import { execFile } from 'node:child_process'
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { DriverError, errorMessage, standardPath } from '@sandcell/shared'
import { sandboxMounts } from './bwrap-args.js'
import type { SandboxPaths } from './sandbox-dir.js'

const execFileAsync = promisify(execFile)

/**
 * Copies the sandbox's upper directory to `target` (which must not exist), keeping owners,
 * modes, whiteout devices and the overlay's xattrs, and leaves out the mount points of
 * sandcell's own files that bubblewrap made. @returns whether the sandbox changed nothing
 */
export async function captureUpperDir(
  paths: SandboxPaths,
  target: string,
  signal?: AbortSignal,
): Promise<{ empty: boolean }> {
  try {
    await execFileAsync('cp', ['-a', join(paths.diskMount, 'upper'), target], {
      env: { PATH: standardPath, LC_ALL: 'C' },
      ...(signal === undefined ? {} : { signal }),
    })
  } catch (err) {
    rmSync(target, { recursive: true, force: true })
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new DriverError(`copying a sandbox's changes failed: ${stderr || errorMessage(err)}`, {
      cause: err,
    })
  }
  rmSync(join(target, sandboxMounts.root), { recursive: true, force: true })
  return { empty: readdirSync(target).length === 0 }
}
