/**
 * Blank ext4 images, made once per size and shared by every driver: a container's writable
 * layer and a microVM's disk are sparse copies of one.
 */
import { execFile } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { DriverError, standardPath } from '@sandcell/shared'

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
