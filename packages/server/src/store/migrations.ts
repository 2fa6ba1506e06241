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
]
