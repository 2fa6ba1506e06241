/**
 * Templates, their builds and tag assignments in the server's SQLite file. A tag's history is
 * kept: resolution picks the newest assignment whose build is ready, so a failed rebuild leaves
 * the last good build in service (E2B's behaviour).
 */
import type Database from 'better-sqlite3'
import { z } from 'zod'

export type BuildStatus = 'waiting' | 'building' | 'ready' | 'error'

export interface TemplateRecord {
  id: string
  alias: string
  public: boolean
  createdAt: number
  updatedAt: number
  spawnCount: number
  lastSpawnedAt: number | null
}

export interface BuildReason {
  message: string
  step?: string
}

export interface BuildRecord {
  id: string
  templateId: string
  status: BuildStatus
  reason: BuildReason | null
  /** The build's start request (validated JSON) once triggered. */
  request: unknown
  cpuCount: number
  memoryMB: number
  diskMB: number
  createdAt: number
  updatedAt: number
  finishedAt: number | null
}

export interface TagRecord {
  tag: string
  buildId: string
  assignedAt: number
}

interface TemplateRow {
  id: string
  alias: string
  public: number
  created_at: number
  updated_at: number
  spawn_count: number
  last_spawned_at: number | null
}

interface BuildRow {
  id: string
  template_id: string
  status: string
  reason: string | null
  request: string | null
  cpu_count: number
  memory_mb: number
  disk_mb: number
  created_at: number
  updated_at: number
  finished_at: number | null
}

const reasonSchema = z.object({ message: z.string(), step: z.string().optional() })

function fromTemplateRow(row: TemplateRow): TemplateRecord {
  return {
    id: row.id,
    alias: row.alias,
    public: row.public === 1,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    spawnCount: row.spawn_count,
    lastSpawnedAt: row.last_spawned_at,
  }
}

function fromBuildRow(row: BuildRow): BuildRecord {
  return {
    id: row.id,
    templateId: row.template_id,
    status: row.status as BuildStatus,
    reason: row.reason === null ? null : reasonSchema.parse(JSON.parse(row.reason)),
    request: row.request === null ? undefined : (JSON.parse(row.request) as unknown),
    cpuCount: row.cpu_count,
    memoryMB: row.memory_mb,
    diskMB: row.disk_mb,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  }
}

export class TemplateStore {
  readonly #db: Database.Database

  constructor(db: Database.Database) {
    this.#db = db
  }

  findTemplate(idOrAlias: string): TemplateRecord | undefined {
    const row = this.#db
      .prepare('SELECT * FROM templates WHERE id = ? OR alias = ?')
      .get(idOrAlias, idOrAlias) as TemplateRow | undefined
    return row === undefined ? undefined : fromTemplateRow(row)
  }

  listTemplates(): TemplateRecord[] {
    return (
      this.#db.prepare('SELECT * FROM templates ORDER BY created_at, id').all() as TemplateRow[]
    ).map(fromTemplateRow)
  }

  insertTemplate(record: TemplateRecord): void {
    this.#db
      .prepare(
        `INSERT INTO templates (id, alias, public, created_at, updated_at, spawn_count, last_spawned_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        record.id,
        record.alias,
        record.public ? 1 : 0,
        record.createdAt,
        record.updatedAt,
        record.spawnCount,
        record.lastSpawnedAt,
      )
  }

  setPublic(id: string, value: boolean): void {
    this.#db
      .prepare('UPDATE templates SET public = ?, updated_at = ? WHERE id = ?')
      .run(value ? 1 : 0, Date.now(), id)
  }

  recordSpawn(id: string): void {
    const now = Date.now()
    this.#db
      .prepare(
        'UPDATE templates SET spawn_count = spawn_count + 1, last_spawned_at = ? WHERE id = ?',
      )
      .run(now, id)
  }

  deleteTemplate(id: string): void {
    this.#db.prepare('DELETE FROM templates WHERE id = ?').run(id)
  }

  insertBuild(record: BuildRecord): void {
    this.#db
      .prepare(
        `INSERT INTO template_builds (id, template_id, status, reason, request, cpu_count, memory_mb,
           disk_mb, created_at, updated_at, finished_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        record.id,
        record.templateId,
        record.status,
        record.reason === null ? null : JSON.stringify(record.reason),
        record.request === undefined ? null : JSON.stringify(record.request),
        record.cpuCount,
        record.memoryMB,
        record.diskMB,
        record.createdAt,
        record.updatedAt,
        record.finishedAt,
      )
    this.#db
      .prepare('UPDATE templates SET updated_at = ? WHERE id = ?')
      .run(Date.now(), record.templateId)
  }

  findBuild(id: string): BuildRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM template_builds WHERE id = ?').get(id) as
      BuildRow | undefined
    return row === undefined ? undefined : fromBuildRow(row)
  }

  listBuilds(templateId?: string): BuildRecord[] {
    const rows = (
      templateId === undefined
        ? this.#db.prepare('SELECT * FROM template_builds ORDER BY created_at, id').all()
        : this.#db
            .prepare('SELECT * FROM template_builds WHERE template_id = ? ORDER BY created_at, id')
            .all(templateId)
    ) as BuildRow[]
    return rows.map(fromBuildRow)
  }

  /** Moves a build on; the terminal states also set its finish time. */
  updateBuild(
    id: string,
    change: { status: BuildStatus; reason?: BuildReason; request?: unknown },
  ): void {
    const now = Date.now()
    const terminal = change.status === 'ready' || change.status === 'error'
    this.#db
      .prepare(
        `UPDATE template_builds SET status = ?, reason = COALESCE(?, reason),
           request = COALESCE(?, request), updated_at = ?, finished_at = ? WHERE id = ?`,
      )
      .run(
        change.status,
        change.reason === undefined ? null : JSON.stringify(change.reason),
        change.request === undefined ? null : JSON.stringify(change.request),
        now,
        terminal ? now : null,
        id,
      )
  }

  assignTags(templateId: string, buildId: string, tags: readonly string[]): void {
    const insert = this.#db.prepare(
      'INSERT INTO template_tags (template_id, tag, build_id, assigned_at) VALUES (?, ?, ?, ?)',
    )
    const now = Date.now()
    this.#db.transaction(() => {
      for (const tag of tags) {
        insert.run(templateId, tag, buildId, now)
      }
    })()
  }

  removeTags(templateId: string, tags: readonly string[]): number {
    const remove = this.#db.prepare('DELETE FROM template_tags WHERE template_id = ? AND tag = ?')
    let removed = 0
    this.#db.transaction(() => {
      for (const tag of tags) {
        removed += remove.run(templateId, tag).changes
      }
    })()
    return removed
  }

  /** The build a tag resolves to: its newest assignment to a ready build. */
  resolveTag(templateId: string, tag: string): string | undefined {
    const row = this.#db
      .prepare(
        `SELECT t.build_id AS buildId FROM template_tags t JOIN template_builds b ON b.id = t.build_id
         WHERE t.template_id = ? AND t.tag = ? AND b.status = 'ready' ORDER BY t.seq DESC LIMIT 1`,
      )
      .get(templateId, tag) as { buildId: string } | undefined
    return row?.buildId
  }

  /** Whether the template has the tag at all (assigned to any build). */
  hasTag(templateId: string, tag: string): boolean {
    return (
      this.#db
        .prepare('SELECT 1 FROM template_tags WHERE template_id = ? AND tag = ? LIMIT 1')
        .get(templateId, tag) !== undefined
    )
  }

  /** Every tag with the build it resolves to now (ready builds only). */
  listTags(templateId: string): TagRecord[] {
    return this.#db
      .prepare(
        `SELECT t.tag AS tag, t.build_id AS buildId, t.assigned_at AS assignedAt
         FROM template_tags t JOIN template_builds b ON b.id = t.build_id
         WHERE t.template_id = ? AND b.status = 'ready'
           AND t.seq = (SELECT MAX(t2.seq) FROM template_tags t2 JOIN template_builds b2 ON b2.id = t2.build_id
                        WHERE t2.template_id = t.template_id AND t2.tag = t.tag AND b2.status = 'ready')
         ORDER BY t.tag`,
      )
      .all(templateId) as TagRecord[]
  }
}
