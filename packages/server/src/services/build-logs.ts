/**
 * Every build's log: entries in E2B's shape, appended to a JSONL file per build (so a restart
 * or a later status call still has them) and read by index offset, as the SDK pages them.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { stripVTControlCharacters } from 'node:util'
import type { BuildLogLine } from '@sandcell/builds'

/** E2B's `BuildLogEntry`. */
export interface BuildLogEntry {
  timestamp: string
  level: BuildLogLine['level']
  message: string
  step?: string
}

/** Most entries one status call returns (E2B's page size). */
export const maxLogPage = 100

export class BuildLogs {
  readonly #dir: string
  /** Entries of builds this process wrote or read, by build id. */
  readonly #cache = new Map<string, BuildLogEntry[]>()

  constructor(dir: string) {
    this.#dir = dir
  }

  start(): void {
    mkdirSync(this.#dir, { recursive: true, mode: 0o700 })
  }

  #path(buildId: string): string {
    return join(this.#dir, `${buildId}.jsonl`)
  }

  #entries(buildId: string): BuildLogEntry[] {
    let entries = this.#cache.get(buildId)
    if (entries === undefined) {
      const path = this.#path(buildId)
      entries = existsSync(path)
        ? readFileSync(path, 'utf8')
            .split('\n')
            .filter((line) => line !== '')
            .map((line) => JSON.parse(line) as BuildLogEntry)
        : []
      this.#cache.set(buildId, entries)
    }
    return entries
  }

  append(buildId: string, line: BuildLogLine): void {
    const entry: BuildLogEntry = {
      timestamp: new Date().toISOString(),
      level: line.level,
      // Colours and cursor moves a build command printed: the SDK strips them too.
      message: stripVTControlCharacters(line.message),
      ...(line.step === undefined ? {} : { step: line.step }),
    }
    this.#entries(buildId).push(entry)
    appendFileSync(this.#path(buildId), `${JSON.stringify(entry)}\n`, { mode: 0o600 })
  }

  /** Entries from `offset` on, at most `limit` (and at most a page). */
  read(buildId: string, offset: number, limit = maxLogPage): BuildLogEntry[] {
    return this.#entries(buildId).slice(offset, offset + Math.min(limit, maxLogPage))
  }

  /** Entries of one step at warn level or above: what E2B puts in a failure's reason. */
  problems(buildId: string, step: string): BuildLogEntry[] {
    return this.#entries(buildId).filter(
      (entry) => entry.step === step && (entry.level === 'warn' || entry.level === 'error'),
    )
  }

  /** Drops a finished build's entries from memory (the file stays for later reads). */
  release(buildId: string): void {
    this.#cache.delete(buildId)
  }

  remove(buildId: string): void {
    this.#cache.delete(buildId)
    rmSync(this.#path(buildId), { force: true })
  }
}
