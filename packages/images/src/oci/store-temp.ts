/**
 * Temporary names in the image store: everything is made under a `.tmp-<pid>-<start>-<random>`
 * name and renamed when complete, so a crash leaves only names that are never read, and that a
 * later process removes once their maker is gone.
 */
import { randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { isProcessAlive, processStartTime, type Logger } from '@sandcell/shared'

const tempPrefix = '.tmp-'
const tempPattern = /^\.tmp-(\d+)-(\d+)-[0-9a-f]+$/

let ownStartTime: number | undefined

/** A fresh temporary name (not a path) owned by this process. */
export function tempName(): string {
  ownStartTime ??= processStartTime(process.pid) ?? 0
  return `${tempPrefix}${process.pid}-${ownStartTime}-${randomBytes(6).toString('hex')}`
}

/** Whether a directory entry's name is a temporary one (never a finished blob, layer or image). */
export function isTempName(name: string): boolean {
  return name.startsWith(tempPrefix)
}

/**
 * Removes the temporary entries of `dir` whose process is gone (dead, or its pid recycled).
 * Those of live processes stay: they may be pulling right now.
 * @returns the paths removed
 */
export async function removeStaleTemps(dir: string, log: Logger): Promise<string[]> {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return []
  }
  const removed: string[] = []
  for (const name of names) {
    const match = tempPattern.exec(name)
    if (match === null) {
      continue
    }
    const pid = Number(match[1])
    const startTime = Number(match[2])
    if (pid === process.pid || isProcessAlive(pid, startTime)) {
      continue
    }
    const path = join(dir, name)
    log.warn({ path }, 'removing what a crashed image pull left')
    await rm(path, { recursive: true, force: true, maxRetries: 3 })
    removed.push(path)
  }
  return removed
}
