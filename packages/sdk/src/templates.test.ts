import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { fakeHttp } from './fake-http.js'
import { createTemplatesApi, type BuildLogEntry } from './templates.js'

const template = (id: string) => ({
  templateID: id,
  buildID: 'b1',
  names: [`name-${id}`],
  aliases: [`name-${id}`],
  public: false,
  buildStatus: 'ready',
  buildCount: 2,
  spawnCount: 0,
  lastSpawnedAt: null,
  cpuCount: 2,
  memoryMB: 1024,
  diskSizeMB: 2048,
  envdVersion: '0.6.4',
  createdAt: '2025-01-01T00:00:00Z',
  updatedAt: '2025-01-01T00:01:00Z',
  createdBy: null,
})

const entry = (message: string, step?: string) => ({
  timestamp: '2025-01-01T00:00:00.000Z',
  level: 'info',
  message,
  ...(step === undefined ? {} : { step }),
})

const page = (status: string, entries: ReturnType<typeof entry>[], reason?: unknown) => ({
  templateID: 't1',
  buildID: 'b1',
  status,
  logEntries: entries,
  logs: [],
  ...(reason === undefined ? {} : { reason }),
})

describe('templates resource', () => {
  it('lists every page, in the domain names', async () => {
    const http = fakeHttp([
      { body: [template('t1')], headers: { 'x-next-token': 't1' } },
      { body: [template('t2')] },
    ])
    const templates = await createTemplatesApi(http).list()
    assert.deepEqual(
      http.requests.map((request) => request.query),
      [{ nextToken: undefined }, { nextToken: 't1' }],
    )
    assert.deepEqual(
      templates.map((t) => [t.templateId, t.names, t.memoryMiB, t.diskSizeMiB]),
      [
        ['t1', ['name-t1'], 1024, 2048],
        ['t2', ['name-t2'], 1024, 2048],
      ],
    )
    assert.equal('lastSpawnedAt' in (templates[0] ?? {}), false)
    assert.deepEqual(templates[0]?.createdAt, new Date('2025-01-01T00:00:00Z'))
  })

  it('gets a template with its builds and resolves names through the aliases route', async () => {
    const http = fakeHttp([
      {
        body: {
          ...template('t1'),
          builds: [
            {
              buildID: 'b1',
              status: 'ready',
              createdAt: '2025-01-01T00:00:00Z',
              updatedAt: '2025-01-01T00:00:05Z',
              finishedAt: '2025-01-01T00:00:05Z',
              cpuCount: 2,
              memoryMB: 1024,
            },
          ],
        },
      },
      { body: { templateID: 't1', public: false } },
      { status: 204 },
    ])
    const api = createTemplatesApi(http)
    const detail = await api.get('t1')
    assert.deepEqual(detail.builds[0]?.finishedAt, new Date('2025-01-01T00:00:05Z'))
    assert.deepEqual(await api.resolveName('my app:v1'), { templateId: 't1', public: false })
    await api.delete('t1')
    assert.deepEqual(
      http.requests.map((request) => `${request.method} ${request.path}`),
      ['GET /templates/t1', 'GET /templates/aliases/my%20app%3Av1', 'DELETE /templates/t1'],
    )
  })

  it('reads the log written so far, page after page, and stops', async () => {
    const http = fakeHttp([
      { body: page('building', [entry('a', 'base'), entry('b', '1')]) },
      { body: page('building', [entry('c', '1')]) },
      { body: page('building', []) },
    ])
    const lines: BuildLogEntry[] = []
    const last = await createTemplatesApi(http).readBuildLog('t1', 'b1', {
      logsOffset: 3,
      onLog: (line) => lines.push(line),
    })
    assert.equal(last.status, 'building')
    assert.deepEqual(
      lines.map((line) => [line.step, line.message]),
      [
        ['base', 'a'],
        ['1', 'b'],
        ['1', 'c'],
      ],
    )
    assert.deepEqual(
      http.requests.map((request) => request.query),
      [{ logsOffset: '3' }, { logsOffset: '5' }, { logsOffset: '6' }],
    )
  })

  it('follows a build to its end and drains the log after it', async () => {
    const reason = { message: 'command exited with code 3', step: '2', logEntries: [] }
    const http = fakeHttp([
      { body: page('waiting', []) },
      { body: page('building', [entry('one', '1')]) },
      { body: page('building', []) },
      { body: page('error', [entry('Build failed: command exited with code 3', '2')], reason) },
      { body: page('error', [], reason) },
    ])
    const lines: string[] = []
    const last = await createTemplatesApi(http).readBuildLog('t1', 'b1', {
      follow: true,
      pollIntervalMs: 1,
      onLog: (line) => lines.push(line.message),
    })
    assert.deepEqual(lines, ['one', 'Build failed: command exited with code 3'])
    assert.equal(last.status, 'error')
    assert.deepEqual(last.reason, reason)
    assert.equal(http.requests.length, 5)
  })
})
