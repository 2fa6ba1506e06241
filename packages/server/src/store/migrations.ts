/** Schema migrations of the server's SQLite store, applied in order, each exactly once. */

export interface Migration {
  version: number
  sql: string
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        template_id TEXT NOT NULL,
        driver TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'paused')),
        client_id TEXT NOT NULL,
        metadata TEXT NOT NULL,
        env_vars TEXT NOT NULL,
        envd_access_token TEXT NOT NULL,
        limits TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        end_at INTEGER NOT NULL,
        on_timeout TEXT NOT NULL CHECK (on_timeout IN ('kill', 'pause')),
        auto_resume INTEGER NOT NULL,
        allow_internet_access INTEGER,
        network TEXT
      );
      CREATE TABLE api_keys (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        names TEXT NOT NULL,
        template_id TEXT NOT NULL,
        driver TEXT NOT NULL,
        limits TEXT NOT NULL,
        env_vars TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );
    `,
  },
  {
    version: 2,
    sql: `
      ALTER TABLE sandboxes ADD COLUMN traffic_access_token TEXT;
    `,
  },
  {
    version: 3,
    sql: `
      CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        alias TEXT NOT NULL UNIQUE,
        public INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        spawn_count INTEGER NOT NULL DEFAULT 0,
        last_spawned_at INTEGER
      );
      CREATE TABLE template_builds (
        id TEXT PRIMARY KEY,
        template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        status TEXT NOT NULL CHECK (status IN ('waiting', 'building', 'ready', 'error')),
        reason TEXT,
        request TEXT,
        cpu_count REAL NOT NULL,
        memory_mb INTEGER NOT NULL,
        disk_mb INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER
      );
      CREATE INDEX template_builds_by_template ON template_builds (template_id, created_at);
      CREATE TABLE template_tags (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        build_id TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
        assigned_at INTEGER NOT NULL
      );
      CREATE INDEX template_tags_by_tag ON template_tags (template_id, tag, seq);
    `,
  },
  {
    version: 4,
    sql: `
      ALTER TABLE sandboxes ADD COLUMN auto_pause_memory INTEGER NOT NULL DEFAULT 1;
      ALTER TABLE sandboxes ADD COLUMN filesystem_pause TEXT;
      ALTER TABLE snapshots ADD COLUMN memory INTEGER;
    `,
  },
  {
    version: 5,
    sql: `
      CREATE TABLE functions (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
      CREATE TABLE function_versions (
        name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        runtime TEXT NOT NULL CHECK (runtime IN ('python', 'node')),
        entry TEXT NOT NULL,
        config TEXT NOT NULL,
        upload_bytes INTEGER NOT NULL,
        entries INTEGER NOT NULL,
        uploaded_at INTEGER NOT NULL,
        PRIMARY KEY (name, digest)
      );
    `,
  },
]
