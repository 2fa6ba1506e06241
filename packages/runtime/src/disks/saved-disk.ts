/**
 * A sandbox's disk image saved into a snapshot directory: complete under its own name or not
 * there at all, so that a crash mid-copy never leaves a disk that looks whole.
 */
import { renameSync, rmSync } from 'node:fs'
import { ResourceExhaustedError } from '@sandcell/shared'
import { SyscallError, sparseCopy } from '../os/native.js'

/**
 * Copies the image at `source` (its data extents only) to `target`.
 * @throws ResourceExhaustedError when the host has no space for it
 */
export function saveDiskImage(source: string, target: string, sandboxId: string): void {
  const partial = `${target}.partial`
  try {
    sparseCopy(source, partial)
    renameSync(partial, target)
  } catch (err) {
    rmSync(partial, { force: true })
    if (err instanceof SyscallError && (err.errnoCode === 'ENOSPC' || err.errnoCode === 'EDQUOT')) {
      throw new ResourceExhaustedError(`no space on the host to save the disk of ${sandboxId}`, {
        cause: err,
      })
    }
    throw err
  }
}
