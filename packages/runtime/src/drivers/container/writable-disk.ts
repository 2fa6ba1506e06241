/**
 * The sandbox's writable layer: a sparse ext4 image of the sandbox's disk size on a loop device,
 * holding the overlay's upper and work directories. A real filesystem gives a hard size limit
 * (ENOSPC, not an OOM kill as a tmpfs would), reclaimable page cache, and a file that outlives
 * the server process for re-adoption and snapshots.
 */
import { closeSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { MS, SyscallError, loopAttach, mount, sparseCopy, umount } from '../../os/native.js'
import type { SandboxPaths } from './sandbox-dir.js'

/**
 * Copies the blank image into the sandbox, mounts it, and mounts the overlay on top of the
 * template's lower directories (topmost first).
 */
export function mountSandboxRoot(
  paths: SandboxPaths,
  blankImage: string,
  lowerDirs: readonly string[],
): void {
  sparseCopy(blankImage, paths.diskImage)
  mkdirSync(paths.diskMount, { mode: 0o700 })
  mkdirSync(paths.rootfs, { mode: 0o755 })
  const device = loopAttach(paths.diskImage)
  try {
    mount(device.path, paths.diskMount, 'ext4', MS.NOSUID | MS.NODEV | MS.NOATIME, 'noinit_itable')
  } finally {
    // Mounted, the filesystem holds the device; unmounted, this close frees it (autoclear).
    closeSync(device.fd)
  }
  mount(
    'overlay',
    paths.rootfs,
    'overlay',
    MS.NOSUID | MS.NODEV,
    `lowerdir=${lowerDirs.join(':')},upperdir=${join(paths.diskMount, 'upper')},workdir=${join(paths.diskMount, 'work')}`,
  )
}

function unmountIfMounted(target: string): void {
  try {
    umount(target, { detach: true })
  } catch (err) {
    // EINVAL: not a mount point (never mounted or already gone); ENOENT: dir removed.
    if (err instanceof SyscallError && (err.errnoCode === 'EINVAL' || err.errnoCode === 'ENOENT')) {
      return
    }
    throw err
  }
}

/**
 * Unmounts the overlay and the disk. Lazy detach: a sandbox being torn down may still hold
 * references for a moment; the loop device frees itself (autoclear) when the last one goes.
 */
export function unmountSandboxRoot(paths: SandboxPaths): void {
  unmountIfMounted(paths.rootfs)
  unmountIfMounted(paths.diskMount)
}
