/** Deployed functions and every version of each (by code digest) in the server's SQLite file. */
import type Database from 'better-sqlite3'
import type { FunctionConfig, FunctionRuntime } from '@sandcell/functions'

export interface FunctionVersionRecord {
  name: string
  digest: string
  runtime: FunctionRuntime
  entry: string
  config: FunctionConfig
  uploadBytes: number
  entries: number
  uploadedAt: number
}

export interface FunctionRecord {
  name: string
  /** The version invocations use. */
  digest: string
  createdAt: number
  updatedAt: number
}

interface VersionRow {
  name: string
  digest: string
  runtime: string
  entry: string
  config: string
  upload_bytes: number
  entries: number
  uploaded_at: number
}

function fromVersionRow(row: VersionRow): FunctionVersionRecord {
  return {
    name: row.name,
    digest: row.digest,
    runtime: row.runtime as FunctionRuntime,
    entry: row.entry,
    config: JSON.parse(row.config) as FunctionConfig,
    uploadBytes: row.upload_bytes,
    entries: row.entries,
    uploadedAt: row.uploaded_at,
  }
}

export class FunctionStore {
  readonly #db: Database.Database

  constructor(db: Database.Database) {
    this.#db = db
  }

  /** Records a version and makes it the one invocations use (one transaction). */
  deploy(version: FunctionVersionRecord): void {
    this.#db.transaction(() => {
      this.#db
        .prepare(
          `INSERT INTO functions (name, digest, created_at, updated_at) VALUES (?, ?, ?, ?)
           ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`,
        )
        .run(version.name, version.digest, version.uploadedAt, version.uploadedAt)
      this.#db
        .prepare(
          `INSERT INTO function_versions (name, digest, runtime, entry, config, upload_bytes, entries, uploaded_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (name, digest) DO UPDATE SET uploaded_at = excluded.uploaded_at`,
        )
        .run(
          version.name,
          version.digest,
          version.runtime,
          version.entry,
          JSON.stringify(version.config),
          version.uploadBytes,
          version.entries,
          version.uploadedAt,
        )
    })()
  }

  find(name: string): FunctionRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM functions WHERE name = ?').get(name) as
      { name: string; digest: string; created_at: number; updated_at: number } | undefined
    return row === undefined
      ? undefined
      : { name: row.name, digest: row.digest, createdAt: row.created_at, updatedAt: row.updated_at }
  }

  /** The version invocations of `name` use now. */
  current(name: string): FunctionVersionRecord | undefined {
    const row = this.#db
      .prepare(
        `SELECT v.* FROM functions f JOIN function_versions v ON v.name = f.name AND v.digest = f.digest
         WHERE f.name = ?`,
      )
      .get(name) as VersionRow | undefined
    return row === undefined ? undefined : fromVersionRow(row)
  }

  versions(name: string): FunctionVersionRecord[] {
    return (
      this.#db
        .prepare('SELECT * FROM function_versions WHERE name = ? ORDER BY uploaded_at')
        .all(name) as VersionRow[]
    ).map(fromVersionRow)
  }

  names(): string[] {
    return (
      this.#db.prepare('SELECT name FROM functions ORDER BY name').all() as { name: string }[]
    ).map((row) => row.name)
  }

  delete(name: string): boolean {
    return this.#db.prepare('DELETE FROM functions WHERE name = ?').run(name).changes > 0
  }

  /** Digests some function still has a version of (their code is kept). */
  digestsInUse(): Set<string> {
    return new Set(
      (
        this.#db.prepare('SELECT DISTINCT digest FROM function_versions').all() as {
          digest: string
        }[]
      ).map((row) => row.digest),
    )
  }
}
