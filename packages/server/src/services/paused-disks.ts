/**
 * Where filesystem-only pauses keep sandbox disks: one directory per paused sandbox under the
 * server's data dir, removed when the sandbox boots again or is killed, and swept after a
 * restart of whatever no paused sandbox owns.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'

/** The folder of every paused sandbox's disk. */
function pausedDisksDir(dataDir: string): string {
  return join(dataDir, 'paused')
}

/** The directory holding the disk of sandbox `id` while it is paused on its filesystem only. */
export function pausedDiskDir(dataDir: string, id: string): string {
  return join(pausedDisksDir(dataDir), id)
}

/**
 * Removes the disks no paused sandbox owns (a crash between a shut-down and the store, a kill
 * while the server was down); returns the ids removed.
 */
export function sweepPausedDisks(dataDir: string, owners: ReadonlySet<string>): string[] {
  const dir = pausedDisksDir(dataDir)
  if (!existsSync(dir)) {
    return []
  }
  const orphans = readdirSync(dir).filter((id) => !owners.has(id))
  for (const id of orphans) {
    rmSync(join(dir, id), { recursive: true, force: true })
  }
  return orphans
}
