/**
 * A real sandcell server in this process for the run API tests: port 0, a temp data dir, the
 * shared test templates, a test cgroup, and small helpers to call its Piston and Lambdo routes.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadServerConfig, startServer, type StartedServer } from '@sandcell/server'
import { createTestLogger, testCgroupParent, testTemplatesDir } from '@sandcell/test-utils'

export const runTestApiKey = 'sc_test_run_0123456789abcdefghijk'

export interface RunTestServer {
  server: StartedServer
  url: string
  dataDir: string
  log: ReturnType<typeof createTestLogger>
  /** Sends JSON (or `body` as is with `contentType`) and reads the answer. */
  call(
    method: string,
    path: string,
    options?: {
      json?: unknown
      body?: string
      contentType?: string
      headers?: Record<string, string>
    },
  ): Promise<{ status: number; headers: Headers; body: unknown; text: string }>
  close(): Promise<void>
}

export async function startRunServer(flags: Record<string, unknown> = {}): Promise<RunTestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-run-'))
  const log = createTestLogger()
  const config = loadServerConfig({
    env: {},
    flags: {
      port: 0,
      dataDir,
      templatesDir: testTemplatesDir,
      cgroupParent: testCgroupParent,
      apiKeys: [runTestApiKey],
      warmPool: {},
      killSandboxesOnExit: true,
      logLevel: 'debug',
      ...flags,
    },
  })
  const server = await startServer({ config, log })
  return {
    server,
    url: server.url,
    dataDir,
    log,
    async call(method, path, options = {}) {
      const headers: Record<string, string> = { ...options.headers }
      let body: string | undefined
      if (options.json !== undefined) {
        headers['content-type'] = options.contentType ?? 'application/json'
        body = JSON.stringify(options.json)
      } else if (options.body !== undefined) {
        if (options.contentType !== undefined) {
          headers['content-type'] = options.contentType
        }
        body = options.body
      }
      // A string body would get fetch's own text/plain type; bytes get none.
      const response = await fetch(`${server.url}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : Buffer.from(body),
      })
      const text = await response.text()
      let parsed: unknown
      try {
        parsed = JSON.parse(text)
      } catch {
        parsed = undefined
      }
      return { status: response.status, headers: response.headers, body: parsed, text }
    },
    async close() {
      await server.close({ killSandboxes: true })
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

/** A Piston stage as the tests read it. */
export interface PistonStage {
  stdout: string
  stderr: string
  output: string
  code: number | null
  signal: string | null
  status: string | null
  message: string | null
  wall_time: number
  cpu_time: number | null
  memory: number | null
}

export interface PistonResult {
  language: string
  version: string
  run: PistonStage
  compile?: PistonStage
}
