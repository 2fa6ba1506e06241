/**
 * Build directories: a build happens in a `.build-<random>` directory beside its destination and
 * becomes the template only by one atomic rename; leftovers of crashed builds are removed.
 */
import { existsSync, readFileSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, rename, rm } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { BugError, DriverError, type Logger } from '@sandcell/shared'

/** Prefix of in-progress build directories; anything carrying it is never a usable template. */
export const buildDirPrefix = '.build-'

/**
 * Creates an empty `.build-<random>` directory (mode 0755, it becomes the rootfs `/`) next to
 * where the template will live, on the same filesystem so the final rename is atomic.
 */
export async function createBuildDir(templateDir: string): Promise<string> {
  await mkdir(templateDir, { recursive: true, mode: 0o755 })
  const dir = await mkdtemp(join(templateDir, buildDirPrefix))
  await chmod(dir, 0o755)
  return dir
}

/**
 * Runs `build` in a new build directory of `templateDir` (see {@link createBuildDir}). When it
 * fails, the directory is removed (a failure to remove it is logged) and the error rethrown.
 */
export async function withBuildDir<T>(
  templateDir: string,
  log: Logger,
  build: (buildDir: string) => Promise<T>,
): Promise<T> {
  const buildDir = await createBuildDir(templateDir)
  try {
    return await build(buildDir)
  } catch (err) {
    await removeBuildDir(buildDir).catch((cleanupError: unknown) => {
      log.error({ err: cleanupError, buildDir }, 'cannot remove a failed template build')
    })
    throw err
  }
}

/**
 * Removes `.build-*` directories that crashed or aborted builds left. Call it only while
 * holding the template's build lock: otherwise it could delete a build in progress.
 * @returns the directories removed
 */
export async function removeStaleBuilds(templateDir: string, log: Logger): Promise<string[]> {
  let names: string[]
  try {
    names = await readdir(templateDir)
  } catch {
    return []
  }
  const removed: string[] = []
  for (const name of names.filter((n) => n.startsWith(buildDirPrefix))) {
    const dir = join(templateDir, name)
    log.warn({ dir }, 'removing a stale template build')
    await removeBuildDir(dir)
    removed.push(dir)
  }
  return removed
}

/**
 * Deletes a build directory. Refuses while anything is mounted inside it: a recursive delete
 * would descend into a leftover bind mount of the host's /dev or /sys.
 * @throws DriverError naming the mounts
 */
export async function removeBuildDir(dir: string): Promise<void> {
  const mounts = mountsUnder(dir)
  if (mounts.length > 0) {
    throw new DriverError(
      `not removing ${dir}: ${mounts.join(', ')} ${mounts.length === 1 ? 'is' : 'are'} still mounted inside it; unmount (umount -R) and retry`,
      { details: { dir, mounts } },
    )
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
}

/** Mount points at or below `dir` in this process's mount namespace. */
export function mountsUnder(dir: string): string[] {
  const root = resolve(dir)
  const prefix = root.endsWith(sep) ? root : root + sep
  let mountinfo: string
  try {
    mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  const found: string[] = []
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4]
    if (field === undefined) {
      continue
    }
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    const point = field.replace(/\\([0-7]{3})/g, (_match, octal: string) =>
      String.fromCharCode(parseInt(octal, 8)),
    )
    if (point === root || point.startsWith(prefix)) {
      found.push(point)
    }
  }
  return found
}

/** Prefix of root filesystems a newer build replaced (see {@link retireRootfs}). */
export const retiredPrefix = '.retired-'

/**
 * Moves an outdated template's root filesystem aside, to `.retired-<random>` beside it, so that a
 * new build can take its place. Sandboxes running on it keep it: their overlay mounts follow the
 * rename. It is never removed automatically, as no process can tell whether another mount
 * namespace still uses it. Call it under the template's build lock, right before committing.
 * @returns the path the old tree moved to
 */
export async function retireRootfs(rootfsDir: string): Promise<string> {
  const retired = await mkdtemp(join(dirname(rootfsDir), retiredPrefix))
  // mkdtemp made an empty directory: rename() replaces an empty directory atomically.
  await rename(rootfsDir, retired)
  return retired
}

/**
 * Makes a finished build the template: one rename, so a reader sees either no rootfs or a
 * complete one.
 * @throws BugError when the rootfs exists already (callers check under the lock first)
 */
export async function commitBuild(buildDir: string, rootfsDir: string): Promise<void> {
  if (existsSync(rootfsDir)) {
    throw new BugError(`${rootfsDir} exists already: a template is built once, under its lock`)
  }
  await rename(buildDir, rootfsDir)
}
