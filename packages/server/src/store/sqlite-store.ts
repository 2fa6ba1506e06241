/**
 * The server's state in one SQLite file (WAL): sandboxes with their lifetimes, hashed API keys,
 * snapshots. Everything a restart needs to carry on where the last process stopped.
 */
import Database from 'better-sqlite3'
import { z } from 'zod'
import type { EgressPolicy } from '@sandcell/network'
import type { DriverKind, SandboxLimits } from '@sandcell/runtime'
import { BugError, type SandboxId } from '@sandcell/shared'
import { migrations } from './migrations.js'

export type SandboxRecordState = 'running' | 'paused'
export type OnTimeout = 'kill' | 'pause'

export interface SandboxRecord {
  id: SandboxId
  templateId: string
  driver: DriverKind
  state: SandboxRecordState
  clientId: string
  metadata: Record<string, string>
  envVars: Record<string, string>
  envdAccessToken: string
  limits: SandboxLimits
  /** Unix ms. */
  startedAt: number
  /** Unix ms: when the sandbox is killed or paused (onTimeout). */
  endAt: number
  onTimeout: OnTimeout
  /** Whether a pause at the timeout keeps memory (E2B's `autoPauseMemory`) or the filesystem only. */
  autoPauseMemory: boolean
  autoResume: boolean
  /**
   * Set while the sandbox is paused keeping its filesystem only: nothing of it runs, its disk
   * waits under the server's data dir, and a resume boots a new sandbox (same id) on it.
   */
  filesystemPause: FilesystemPause | null
  /** As the client set it (E2B's `allow_internet_access`); null when it did not. */
  allowInternetAccess: boolean | null
  /** The network settings the client gave, as E2B's API returns them; null when none. */
  network: SandboxNetworkRecord | null
  /** Required on the sandbox's ports but envd's (E2B's `allowPublicTraffic: false`). */
  trafficAccessToken: string | null
}

/** What a sandbox paused on its filesystem only boots from again. */
export interface FilesystemPause {
  /** The runtime's template of the sandbox (a built template's build id). */
  template: string
  /** The egress rules it had, or null for a sandbox without a network of its own. */
  egress: EgressPolicy | null
}

const filesystemPauseSchema = z.object({
  template: z.string(),
  egress: z
    .object({
      allowCidrs: z.array(z.string()),
      denyCidrs: z.array(z.string()),
      allowDomains: z.array(z.string()),
    })
    .nullable(),
})

/** A sandbox's network settings in E2B's names (what GET /sandboxes/{id} returns). */
export interface SandboxNetworkRecord {
  allowOut?: string[]
  denyOut?: string[]
  allowPublicTraffic?: boolean
  maskRequestHost?: string
  httpsPorts?: number[]
}

const networkRecordSchema = z.object({
  allowOut: z.array(z.string()).optional(),
  denyOut: z.array(z.string()).optional(),
  allowPublicTraffic: z.boolean().optional(),
  maskRequestHost: z.string().optional(),
  httpsPorts: z.array(z.number()).optional(),
})

export interface SnapshotRecord {
  id: string
  sandboxId: string
  names: string[]
  templateId: string
  driver: DriverKind
  limits: SandboxLimits
  envVars: Record<string, string>
  /** Whether the snapshot holds memory too (a microVM's) or the filesystem only. */
  memory: boolean
  createdAt: number
}

const stringMap = z.record(z.string(), z.string())
const limitsSchema = z.object({
  memoryMiB: z.number(),
  cpus: z.number(),
  pids: z.number(),
  diskMiB: z.number(),
})

interface SandboxRow {
  id: string
  template_id: string
  driver: string
  state: string
  client_id: string
  metadata: string
  env_vars: string
  envd_access_token: string
  limits: string
  started_at: number
  end_at: number
  on_timeout: string
  auto_pause_memory: number
  auto_resume: number
  allow_internet_access: number | null
  network: string | null
  traffic_access_token: string | null
  filesystem_pause: string | null
}

interface SnapshotRow {
  id: string
  sandbox_id: string
  names: string
  template_id: string
  driver: string
  limits: string
  env_vars: string
  memory: number | null
  created_at: number
}

/** Settings stored before they were checked (an older server kept any object) read as none. */
function parseNetworkRecord(text: string | null): SandboxNetworkRecord | null {
  if (text === null) {
    return null
  }
  const parsed = networkRecordSchema.safeParse(JSON.parse(text))
  return parsed.success ? parsed.data : null
}

function fromSandboxRow(row: SandboxRow): SandboxRecord {
  return {
    id: row.id as SandboxId,
    templateId: row.template_id,
    driver: row.driver as DriverKind,
    state: row.state as SandboxRecordState,
    clientId: row.client_id,
    metadata: stringMap.parse(JSON.parse(row.metadata)),
    envVars: stringMap.parse(JSON.parse(row.env_vars)),
    envdAccessToken: row.envd_access_token,
    limits: limitsSchema.parse(JSON.parse(row.limits)),
    startedAt: row.started_at,
    endAt: row.end_at,
    onTimeout: row.on_timeout as OnTimeout,
    autoPauseMemory: row.auto_pause_memory === 1,
    autoResume: row.auto_resume === 1,
    filesystemPause:
      row.filesystem_pause === null
        ? null
        : filesystemPauseSchema.parse(JSON.parse(row.filesystem_pause)),
    allowInternetAccess:
      row.allow_internet_access === null ? null : row.allow_internet_access === 1,
    network: parseNetworkRecord(row.network),
    trafficAccessToken: row.traffic_access_token,
  }
}

function fromSnapshotRow(row: SnapshotRow): SnapshotRecord {
  return {
    id: row.id,
    sandboxId: row.sandbox_id,
    names: z.array(z.string()).parse(JSON.parse(row.names)),
    templateId: row.template_id,
    driver: row.driver as DriverKind,
    limits: limitsSchema.parse(JSON.parse(row.limits)),
    envVars: stringMap.parse(JSON.parse(row.env_vars)),
    // Snapshots from before the column: only microVMs' kept memory.
    memory: row.memory === null ? row.driver !== 'container' : row.memory === 1,
    createdAt: row.created_at,
  }
}

export class SqliteStore implements Disposable {
  readonly #db: Database.Database

  /** Opens (creating if needed) the database file and brings its schema up to date. */
  constructor(path: string) {
    this.#db = new Database(path)
    this.#db.pragma('journal_mode = WAL')
    // WAL + NORMAL: a power cut may lose the last transactions, never corrupt the file.
    this.#db.pragma('synchronous = NORMAL')
    this.#db.pragma('foreign_keys = ON')
    this.#migrate()
  }

  /** The open database, for the stores of other parts (templates) that share the file. */
  get database(): Database.Database {
    return this.#db
  }

  #migrate(): void {
    this.#db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)')
    const current =
      (
        this.#db.prepare('SELECT MAX(version) AS v FROM schema_version').get() as {
          v: number | null
        }
      ).v ?? 0
    const apply = this.#db.transaction((migration: { version: number; sql: string }) => {
      this.#db.exec(migration.sql)
      this.#db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(migration.version)
    })
    for (const migration of migrations) {
      if (migration.version > current) {
        apply(migration)
      }
    }
  }

  insertSandbox(record: SandboxRecord): void {
    this.#db
      .prepare(
        `INSERT INTO sandboxes (id, template_id, driver, state, client_id, metadata, env_vars,
           envd_access_token, limits, started_at, end_at, on_timeout, auto_pause_memory,
           auto_resume, allow_internet_access, network, traffic_access_token, filesystem_pause)
         VALUES (@id, @templateId, @driver, @state, @clientId, @metadata, @envVars,
           @envdAccessToken, @limits, @startedAt, @endAt, @onTimeout, @autoPauseMemory,
           @autoResume, @allowInternetAccess, @network, @trafficAccessToken, @filesystemPause)`,
      )
      .run({
        ...record,
        metadata: JSON.stringify(record.metadata),
        envVars: JSON.stringify(record.envVars),
        limits: JSON.stringify(record.limits),
        autoPauseMemory: record.autoPauseMemory ? 1 : 0,
        autoResume: record.autoResume ? 1 : 0,
        filesystemPause:
          record.filesystemPause === null ? null : JSON.stringify(record.filesystemPause),
        allowInternetAccess:
          record.allowInternetAccess === null ? null : record.allowInternetAccess ? 1 : 0,
        network: record.network === null ? null : JSON.stringify(record.network),
      })
  }

  /**
   * Changes the state, lifetime, limits, network or filesystem-only pause of a sandbox; a
   * missing id is a bug of the caller.
   */
  updateSandbox(
    id: SandboxId,
    patch: Partial<
      Pick<
        SandboxRecord,
        | 'state'
        | 'endAt'
        | 'limits'
        | 'onTimeout'
        | 'network'
        | 'allowInternetAccess'
        | 'filesystemPause'
      >
    >,
  ): void {
    const sets: string[] = []
    const values: Record<string, unknown> = { id }
    if (patch.state !== undefined) {
      sets.push('state = @state')
      values.state = patch.state
    }
    if (patch.endAt !== undefined) {
      sets.push('end_at = @endAt')
      values.endAt = patch.endAt
    }
    if (patch.limits !== undefined) {
      sets.push('limits = @limits')
      values.limits = JSON.stringify(patch.limits)
    }
    if (patch.onTimeout !== undefined) {
      sets.push('on_timeout = @onTimeout')
      values.onTimeout = patch.onTimeout
    }
    if (patch.network !== undefined) {
      sets.push('network = @network')
      values.network = patch.network === null ? null : JSON.stringify(patch.network)
    }
    if (patch.allowInternetAccess !== undefined) {
      sets.push('allow_internet_access = @allowInternetAccess')
      values.allowInternetAccess =
        patch.allowInternetAccess === null ? null : patch.allowInternetAccess ? 1 : 0
    }
    if (patch.filesystemPause !== undefined) {
      sets.push('filesystem_pause = @filesystemPause')
      values.filesystemPause =
        patch.filesystemPause === null ? null : JSON.stringify(patch.filesystemPause)
    }
    if (sets.length === 0) {
      return
    }
    const result = this.#db
      .prepare(`UPDATE sandboxes SET ${sets.join(', ')} WHERE id = @id`)
      .run(values)
    if (result.changes !== 1) {
      throw new BugError(`updated a sandbox the store does not have: ${id}`)
    }
  }

  deleteSandbox(id: SandboxId): boolean {
    return this.#db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id).changes === 1
  }

  getSandbox(id: string): SandboxRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM sandboxes WHERE id = ?').get(id) as
      SandboxRow | undefined
    return row === undefined ? undefined : fromSandboxRow(row)
  }

  /** Every sandbox, oldest first. */
  listSandboxes(): SandboxRecord[] {
    return (
      this.#db.prepare('SELECT * FROM sandboxes ORDER BY started_at, id').all() as SandboxRow[]
    ).map(fromSandboxRow)
  }

  addApiKeyHash(hash: string, name: string): void {
    this.#db
      .prepare('INSERT INTO api_keys (hash, name, created_at) VALUES (?, ?, ?)')
      .run(hash, name, Date.now())
  }

  apiKeyHashes(): string[] {
    return (this.#db.prepare('SELECT hash FROM api_keys').all() as { hash: string }[]).map(
      (row) => row.hash,
    )
  }

  insertSnapshot(record: SnapshotRecord): void {
    this.#db
      .prepare(
        `INSERT INTO snapshots (id, sandbox_id, names, template_id, driver, limits, env_vars,
           memory, created_at)
         VALUES (@id, @sandboxId, @names, @templateId, @driver, @limits, @envVars, @memory,
           @createdAt)`,
      )
      .run({
        ...record,
        memory: record.memory ? 1 : 0,
        names: JSON.stringify(record.names),
        limits: JSON.stringify(record.limits),
        envVars: JSON.stringify(record.envVars),
      })
  }

  listSnapshots(): SnapshotRecord[] {
    return (
      this.#db.prepare('SELECT * FROM snapshots ORDER BY created_at, id').all() as SnapshotRow[]
    ).map(fromSnapshotRow)
  }

  /** A snapshot by id or by one of its names. */
  findSnapshot(idOrName: string): SnapshotRecord | undefined {
    return this.listSnapshots().find((s) => s.id === idOrName || s.names.includes(idOrName))
  }

  deleteSnapshot(id: string): boolean {
    return this.#db.prepare('DELETE FROM snapshots WHERE id = ?').run(id).changes === 1
  }

  close(): void {
    this.#db.close()
  }

  [Symbol.dispose](): void {
    this.close()
  }
}
