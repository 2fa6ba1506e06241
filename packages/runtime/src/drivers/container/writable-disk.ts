/**
 * The sandbox's writable layer: a sparse ext4 image of the sandbox's disk size on a loop device,
 * holding the overlay's upper and work directories. A real filesystem gives a hard size limit
 * (ENOSPC, not an OOM kill as a tmpfs would), reclaimable page cache, and a file that outlives
 * the server process for re-adoption and snapshots.
 */
import { execFile } from 'node:child_process'
import {
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
} from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { DriverError, standardPath } from '@sandcell/shared'
import { MS, SyscallError, loopAttach, mount, sparseCopy, umount } from '../../os/native.js'
import type { SandboxPaths } from './sandbox-dir.js'

const execFileAsync = promisify(execFile)

/**
 * Returns the path of a blank, formatted image of `sizeMiB`, making it once per size. Every
 * sandbox's disk is a sparse copy of it: copying ~1 MiB of metadata is far cheaper than mkfs.
 */
export async function ensureBlankImage(
  disksDir: string,
  sizeMiB: number,
  sandboxRootUid: number,
): Promise<string> {
  const image = join(disksDir, `blank-${sizeMiB}m.ext4`)
  if (existsSync(image)) {
    return image
  }
  mkdirSync(disksDir, { recursive: true })
  const work = mkdtempSync(join(disksDir, '.mkfs-'))
  try {
    const tree = join(work, 'tree')
    mkdirSync(join(tree, 'upper'), { recursive: true, mode: 0o755 })
    mkdirSync(join(tree, 'work'), { mode: 0o700 })
    // The upper directory is the sandbox's `/`: owned by the sandbox's root.
    chownSync(join(tree, 'upper'), sandboxRootUid, sandboxRootUid)
    const temp = join(work, 'image')
    await execFileAsync(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-d',
        tree,
        '-m',
        '0',
        // No journal: the image lives only as long as its sandbox and is synced before snapshots.
        '-O',
        '^has_journal',
        '-E',
        'lazy_itable_init=1,nodiscard',
        temp,
        `${sizeMiB}M`,
      ],
      { env: { PATH: standardPath } },
    ).catch((err: unknown) => {
      throw new DriverError(`mkfs.ext4 failed for a ${sizeMiB} MiB disk; is e2fsprogs installed?`, {
        cause: err,
      })
    })
    // Rename is atomic: concurrent callers either see no image or a complete one.
    renameSync(temp, image)
    return image
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

/** Copies the blank image into the sandbox, mounts it, and mounts the overlay on top. */
export function mountSandboxRoot(paths: SandboxPaths, blankImage: string, lowerDir: string): void {
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
    `lowerdir=${lowerDir},upperdir=${join(paths.diskMount, 'upper')},workdir=${join(paths.diskMount, 'work')}`,
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
