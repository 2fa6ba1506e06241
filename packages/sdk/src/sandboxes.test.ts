import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { fakeHttp } from './fake-http.js'
import { createSandboxesApi, encodeMetadataFilter, listQuery } from './sandboxes.js'

const listed = (id: string) => ({
  sandboxID: id,
  templateID: 'base',
  clientID: 'c',
  state: 'running',
  startedAt: '2025-01-01T00:00:00Z',
  endAt: '2025-01-01T00:05:00Z',
  cpuCount: 1,
  memoryMB: 512,
  diskSizeMB: 1024,
  metadata: {},
  envdVersion: '0.5.7',
})

const created = { sandboxID: 'sb1', templateID: 'base', clientID: 'c', envdVersion: '0.5.7' }

describe('sandboxes API', () => {
  it('follows X-Next-Token through every page when iterating', async () => {
    const http = fakeHttp([
      { body: [listed('a')], headers: { 'x-next-token': 't1', 'x-total-running': '3' } },
      { body: [listed('b')], headers: { 'x-next-token': 't2' } },
      { body: [listed('c')] },
    ])
    const ids: string[] = []
    for await (const sandbox of createSandboxesApi(http).list({ limit: 1, state: ['running'] })) {
      ids.push(sandbox.sandboxId)
    }
    assert.deepEqual(ids, ['a', 'b', 'c'])
    assert.deepEqual(
      http.requests.map((r) => r.query?.nextToken),
      [undefined, 't1', 't2'],
    )
    assert.ok(http.requests.every((r) => r.query?.limit === '1' && r.query.state === 'running'))
  })

  it('returns one page with its token and running total', async () => {
    const http = fakeHttp([
      { body: [listed('a')], headers: { 'x-next-token': 't1', 'x-total-running': '3' } },
      { body: [] },
    ])
    const api = createSandboxesApi(http)
    const page = await api.listPage({ limit: 1 })
    assert.equal(page.nextToken, 't1')
    assert.equal(page.totalRunning, 3)
    assert.deepEqual(
      page.sandboxes.map((s) => s.sandboxId),
      ['a'],
    )
    const last = await api.listPage({ nextToken: 't1' })
    assert.deepEqual(last, { sandboxes: [] })
  })

  it('tells a resumed sandbox (201) from one that was running (200)', async () => {
    const http = fakeHttp([
      { status: 201, body: created },
      { status: 200, body: created },
    ])
    const api = createSandboxesApi(http)
    assert.equal((await api.connect('sb1', { timeoutMs: 60_000 })).resumed, true)
    assert.equal((await api.connect('sb1')).resumed, false)
    assert.equal(http.requests[0]?.path, '/v2/sandboxes/sb1/connect')
    assert.deepEqual(http.requests[0]?.json, { timeout: 60 })
    assert.deepEqual(http.requests[1]?.json, {})
  })

  it('sends each call to its E2B path, naming the sandbox for error messages', async () => {
    const http = fakeHttp([{}, {}, {}, { body: [] }])
    const api = createSandboxesApi(http)
    await api.kill('a/b')
    await api.pause('sb1')
    await api.setTimeout('sb1', 30_000)
    await api.metrics('sb1', { start: new Date(10_000), end: new Date(20_000) })
    assert.deepEqual(
      http.requests.map((r) => `${r.method} ${r.path}`),
      [
        'DELETE /sandboxes/a%2Fb',
        'POST /sandboxes/sb1/pause',
        'POST /sandboxes/sb1/timeout',
        'GET /sandboxes/sb1/metrics',
      ],
    )
    assert.deepEqual(
      http.requests.map((r) => r.sandboxId),
      ['a/b', 'sb1', 'sb1', 'sb1'],
    )
    assert.deepEqual(http.requests[2]?.json, { timeout: 30 })
    assert.deepEqual(http.requests[3]?.query, { start: '10', end: '20' })
  })

  it('rejects impossible arguments before asking the server', async () => {
    const api = createSandboxesApi(fakeHttp([]))
    await assert.rejects(api.get(''), InvalidArgumentError)
    await assert.rejects(api.create({ timeoutMs: 0 }), InvalidArgumentError)
    await assert.rejects(api.setTimeout('sb1', -5), InvalidArgumentError)
    await assert.rejects(api.listPage({ limit: 0 }), InvalidArgumentError)
  })
})

describe('list query', () => {
  it('encodes every filter in E2B names, leaving unset ones out', () => {
    assert.deepEqual(
      listQuery({
        state: ['running', 'paused'],
        metadata: { app: 'web', 'user id': 'a&b' },
        template: 'base',
        startedAfter: new Date('2025-01-01T00:00:00Z'),
        order: 'desc',
        limit: 5,
        nextToken: 'tok',
      }),
      {
        state: 'running,paused',
        metadata: 'app=web&user%2520id=a%2526b',
        template: 'base',
        startedAfter: '2025-01-01T00:00:00.000Z',
        order: 'desc',
        limit: '5',
        nextToken: 'tok',
      },
    )
    assert.deepEqual(
      Object.values(listQuery({ state: [], metadata: {} })).filter((v) => v !== undefined),
      [],
    )
  })

  it('encodes metadata like the e2b SDK: pairs encoded, then joined as a form', () => {
    assert.equal(encodeMetadataFilter({ k: 'v x' }), 'k=v%2520x')
    assert.equal(new URLSearchParams(encodeMetadataFilter({ 'a=b': 'c' })).get('a%3Db'), 'c')
  })
})
