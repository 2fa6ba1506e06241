/**
 * The content-addressed artifact cache: an artifact lives under a name derived from its inputs
 * (a changed input makes a new one), is built once per host under a cross-process lock, and
 * appears complete or not at all.
 */
import { createHash } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '@sandcell/shared'
import { acquireBuildLock } from './build-lock.js'

/** What an artifact build needs from its caller. */
export interface ArtifactContext {
  log: Logger
  /** Aborts waiting for another builder and the build itself. */
  signal?: AbortSignal
}

/** A short stable hash of `parts`. */
export function hashParts(parts: readonly unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16)
}

/** Identity of a file for cache keys: path, size and modification time. */
export function fileIdentity(path: string): string {
  const stat = statSync(path)
  return `${path}:${stat.size}:${stat.mtimeMs}`
}

/**
 * A hash of a tree's files by content (links by target; `.map` files left out), for small trees
 * such as the agent bundle (a few MiB): rebuilding the bundle with the same result must not
 * invalidate the sandcell image and every template snapshot above it.
 */
export function treeIdentity(dir: string, hash = createHash('sha256')): string {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      treeIdentity(path, hash.update(`dir ${entry.name}\0`))
    } else if (entry.isSymbolicLink()) {
      hash.update(`link ${entry.name} ${readlinkSync(path)}\0`)
    } else if (!entry.name.endsWith('.map')) {
      hash.update(`file ${entry.name}\0`).update(readFileSync(path))
    }
  }
  return hash.copy().digest('hex')
}

/**
 * Returns `<dir>/<name>`, building it first when it is not there: under a cross-process lock,
 * into a temporary directory that becomes `<dir>/<name>` by one rename once complete.
 */
export async function ensureArtifact(
  dir: string,
  name: string,
  context: ArtifactContext,
  build: (workDir: string) => Promise<void>,
): Promise<string> {
  const final = join(dir, name)
  const marker = join(final, '.complete')
  if (existsSync(marker)) {
    return final
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  const lock = await acquireBuildLock(join(dir, `.${name}.lock`), {
    log: context.log,
    ...(context.signal === undefined ? {} : { signal: context.signal }),
    onWait: () => context.log.info({ name }, 'waiting for another build of a guest artifact'),
  })
  try {
    if (existsSync(marker)) {
      return final
    }
    for (const entry of readdirSync(dir)) {
      if (entry.startsWith(`.build-${name}-`)) {
        await rm(join(dir, entry), { recursive: true, force: true })
      }
    }
    const work = await mkdtemp(join(dir, `.build-${name}-`))
    try {
      await build(work)
      writeFileSync(join(work, '.complete'), `${new Date().toISOString()}\n`)
      await lock.assertHeld()
      rmSync(final, { recursive: true, force: true })
      renameSync(work, final)
    } catch (err) {
      await rm(work, { recursive: true, force: true })
      throw err
    }
    return final
  } finally {
    await lock.release()
  }
}
