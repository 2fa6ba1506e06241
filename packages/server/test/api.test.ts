/**
 * The API's own behaviour over plain HTTP (no SDK): authentication, error bodies and statuses,
 * validation, lifecycle conflicts, timeouts that kill or pause, and adoption after a restart.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { loadServerConfig, startServer, type StartedServer } from '@sandcell/server'
import {
  assertNoLeaks,
  createTestLogger,
  snapshotLeaks,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'

const apiKey = 'test-key-0123456789abcdefghijklmnopq'
let baseline: LeakSnapshot
let dataDir: string
let server: StartedServer

function start(): Promise<StartedServer> {
  const config = loadServerConfig({
    env: {
      SANDCELL_TEMPLATES_DIR: testTemplatesDir,
      SANDCELL_CGROUP_PARENT: `sandcell-test-${process.pid}`,
    },
    flags: { port: 0, dataDir, apiKeys: [apiKey], warmPool: { base: 1 }, metricsIntervalMs: 200 },
  })
  return startServer({ config, log: createTestLogger() })
}

async function api(
  method: string,
  path: string,
  options: { body?: unknown; key?: string | null } = {},
): Promise<{ status: number; body: unknown; headers: Headers }> {
  const headers: Record<string, string> = {}
  if (options.key !== null) {
    headers['x-api-key'] = options.key ?? apiKey
  }
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json'
  }
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers,
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
  })
  const text = await res.text()
  return {
    status: res.status,
    body: text === '' ? undefined : (JSON.parse(text) as unknown),
    headers: res.headers,
  }
}

async function create(body: Record<string, unknown> = {}): Promise<string> {
  const res = await api('POST', '/v2/sandboxes', { body: { templateID: 'base', ...body } })
  assert.equal(res.status, 201, JSON.stringify(res.body))
  return (res.body as { sandboxID: string }).sandboxID
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${timeoutMs} ms`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-api-'))
  server = await start()
})

after(async () => {
  await server.close({ killSandboxes: true })
  rmSync(dataDir, { recursive: true, force: true })
  await assertNoLeaks(baseline)
})

describe('E2B API', () => {
  it('rejects requests without a valid API key with 401 in E2B shape', async () => {
    for (const key of [null, 'wrong-key-0123456789abcdef']) {
      const res = await api('GET', '/v2/sandboxes', { key })
      assert.equal(res.status, 401)
      assert.deepEqual(Object.keys(res.body as object).sort(), ['code', 'message'])
      assert.equal((res.body as { code: number }).code, 401)
    }
  })

  it('serves /health and Prometheus /metrics without a key', async () => {
    const health = await api('GET', '/health', { key: null })
    assert.equal(health.status, 200)
    const metrics = await fetch(`${server.url}/metrics`)
    const text = await metrics.text()
    assert.match(text, /^sandcell_sandboxes\{state="running"\} \d+$/m)
    assert.match(text, /sandcell_sandbox_create_seconds_bucket/)
  })

  it('answers 400 naming every invalid field', async () => {
    const res = await api('POST', '/v2/sandboxes', {
      body: { templateID: 5, timeout: -1, metadata: 'x' },
    })
    assert.equal(res.status, 400)
    const message = (res.body as { message: string }).message
    for (const field of ['templateID', 'timeout', 'metadata']) {
      assert.match(message, new RegExp(field))
    }
  })

  it('answers 404 with the name for a template it does not have', async () => {
    const res = await api('POST', '/v2/sandboxes', { body: { templateID: 'no-such-template' } })
    assert.equal(res.status, 404)
    assert.match((res.body as { message: string }).message, /no-such-template/)
  })

  it('refuses a timeout above the maximum and an unknown route', async () => {
    const long = await api('POST', '/v2/sandboxes', {
      body: { templateID: 'base', timeout: 10_000_000 },
    })
    assert.equal(long.status, 400)
    const route = await api('GET', '/v9/nothing')
    assert.equal(route.status, 404)
  })

  it('answers 404 for an unknown sandbox on every sandbox route', async () => {
    for (const [method, path, body] of [
      ['GET', '/sandboxes/nosuchsandbox0000000'],
      ['DELETE', '/sandboxes/nosuchsandbox0000000'],
      ['POST', '/sandboxes/nosuchsandbox0000000/pause'],
      ['POST', '/sandboxes/nosuchsandbox0000000/timeout', { timeout: 10 }],
      ['POST', '/v2/sandboxes/nosuchsandbox0000000/connect', { timeout: 10 }],
      ['GET', '/sandboxes/nosuchsandbox0000000/metrics'],
    ] as const) {
      const res = await api(method, path, body === undefined ? {} : { body })
      assert.equal(res.status, 404, `${method} ${path}`)
    }
  })

  it('pauses once (409 the second time), resumes through connect with 201, then 200', async (t) => {
    const id = await create()
    t.after(() => api('DELETE', `/sandboxes/${id}`))
    assert.equal((await api('POST', `/sandboxes/${id}/pause`)).status, 204)
    assert.equal((await api('POST', `/sandboxes/${id}/pause`)).status, 409)
    const listed = await api('GET', '/v2/sandboxes?state=paused')
    assert.ok((listed.body as { sandboxID: string }[]).some((s) => s.sandboxID === id))
    assert.equal(
      (await api('POST', `/v2/sandboxes/${id}/connect`, { body: { timeout: 60 } })).status,
      201,
    )
    assert.equal(
      (await api('POST', `/v2/sandboxes/${id}/connect`, { body: { timeout: 60 } })).status,
      200,
    )
    assert.equal((await api('POST', `/sandboxes/${id}/resume`, { body: {} })).status, 409)
  })

  it('lists with metadata and state filters and pages with X-Next-Token', async (t) => {
    const ids = [
      await create({ metadata: { suite: 'list', n: '1' } }),
      await create({ metadata: { suite: 'list', n: '2' } }),
      await create({ metadata: { suite: 'other' } }),
    ]
    t.after(() => Promise.all(ids.map((id) => api('DELETE', `/sandboxes/${id}`))))
    const filter = encodeURIComponent('suite=list')
    const first = await api('GET', `/v2/sandboxes?metadata=${filter}&limit=1`)
    assert.equal((first.body as unknown[]).length, 1)
    const token = first.headers.get('x-next-token')
    assert.ok(token !== null)
    const second = await api('GET', `/v2/sandboxes?metadata=${filter}&limit=1&nextToken=${token}`)
    const both = [
      ...(first.body as { sandboxID: string }[]),
      ...(second.body as { sandboxID: string }[]),
    ]
    assert.deepEqual(both.map((s) => s.sandboxID).sort(), ids.slice(0, 2).sort())
    assert.equal(second.headers.get('x-next-token'), null)
    assert.ok(Number(first.headers.get('x-total-running')) >= 3)
    const bad = await api('GET', '/v2/sandboxes?nextToken=garbage')
    assert.equal(bad.status, 400)
  })

  it('kills a sandbox at its timeout, and pauses one that asked for autoPause', async () => {
    const killed = await create({ timeout: 1 })
    const paused = await create({ timeout: 1, autoPause: true })
    await waitFor(async () => (await api('GET', `/sandboxes/${killed}`)).status === 404)
    await waitFor(
      async () =>
        ((await api('GET', `/sandboxes/${paused}`)).body as { state?: string }).state === 'paused',
    )
    const detail = (await api('GET', `/sandboxes/${paused}`)).body as {
      lifecycle: { onTimeout: string }
    }
    assert.equal(detail.lifecycle.onTimeout, 'pause')
    assert.equal((await api('DELETE', `/sandboxes/${paused}`)).status, 204)
  })

  it('sets a new timeout from now and reports it as endAt', async (t) => {
    const id = await create({ timeout: 300 })
    t.after(() => api('DELETE', `/sandboxes/${id}`))
    const before = Date.now()
    assert.equal(
      (await api('POST', `/sandboxes/${id}/timeout`, { body: { timeout: 30 } })).status,
      204,
    )
    const endAt = Date.parse(
      ((await api('GET', `/sandboxes/${id}`)).body as { endAt: string }).endAt,
    )
    assert.ok(
      endAt >= before + 29_000 && endAt <= Date.now() + 31_000,
      `endAt ${new Date(endAt).toISOString()}`,
    )
  })

  it('reports metric samples for a running sandbox', async (t) => {
    const id = await create()
    t.after(() => api('DELETE', `/sandboxes/${id}`))
    const res = await api('GET', `/sandboxes/${id}/metrics`)
    assert.equal(res.status, 200)
    const [sample] = res.body as {
      memUsed: number
      memTotal: number
      diskTotal: number
      cpuCount: number
    }[]
    assert.ok(sample !== undefined && sample.memUsed > 0 && sample.memTotal >= sample.memUsed)
    assert.ok(sample.diskTotal > 0 && sample.cpuCount >= 1)
  })

  it('carries sandboxes, paused state and end times across a restart, and drops expired ones', async () => {
    const running = await create({ timeout: 600, metadata: { keep: 'running' } })
    const paused = await create({ timeout: 600 })
    const expiring = await create({ timeout: 2 })
    await api('POST', `/sandboxes/${paused}/pause`)
    const endAt = ((await api('GET', `/sandboxes/${running}`)).body as { endAt: string }).endAt
    await server.close()
    // While the server is down the expiring sandbox passes its end time.
    await new Promise((resolve) => setTimeout(resolve, 2500))
    server = await start()
    const again = (await api('GET', `/sandboxes/${running}`)).body as {
      endAt: string
      state: string
      metadata: object
    }
    assert.equal(again.endAt, endAt)
    assert.equal(again.state, 'running')
    assert.deepEqual(again.metadata, { keep: 'running' })
    assert.equal(
      ((await api('GET', `/sandboxes/${paused}`)).body as { state: string }).state,
      'paused',
    )
    await waitFor(async () => (await api('GET', `/sandboxes/${expiring}`)).status === 404)
    for (const id of [running, paused]) {
      assert.equal((await api('DELETE', `/sandboxes/${id}`)).status, 204)
    }
  })

  it('validates network rules as E2B does, and replaces them with 204', async (t) => {
    const id = await create()
    t.after(() => api('DELETE', `/sandboxes/${id}`))
    const cases: [unknown, RegExp][] = [
      [{ denyOut: ['example.com'] }, /^invalid denied CIDR example\.com$/],
      [{ denyOut: ['0.0.0.0/8'] }, /^invalid denied CIDR 0\.0\.0\.0\/8$/],
      [{ denyOut: ['10.0.0.0/8:22'] }, /port-specific rules are not supported for egress/],
      [{ allowOut: ['300.1.1.1'] }, /^invalid allowed address 300\.1\.1\.1$/],
      [{ allowOut: ['example.com'] }, /must include 'ALL_TRAFFIC' in deny out/],
      [{ allowOut: ['exa mple.com'], denyOut: ['0.0.0.0/0'] }, /invalid allowed domain/],
      [{ egressProxy: { address: 'proxy:1080' } }, /egressProxy is not supported/],
      [{ rules: { 'example.com': [{}] } }, /rules \(header transforms\) are not supported/],
      [
        { denyOut: Array.from({ length: 10_000 }, (_, i) => `8.${i >> 8}.${i & 255}.0/24`) },
        /at most 1000/,
      ],
    ]
    for (const [body, message] of cases) {
      const res = await api('PUT', `/sandboxes/${id}/network`, { body })
      assert.equal(res.status, 400, JSON.stringify(body).slice(0, 80))
      assert.match((res.body as { message: string }).message, message)
      const created = await api('POST', '/sandboxes', {
        body: { templateID: 'base', network: body },
      })
      assert.equal(created.status, 400, JSON.stringify(body).slice(0, 80))
    }
    const ok = await api('PUT', `/sandboxes/${id}/network`, {
      body: { denyOut: ['0.0.0.0/0'], allowOut: ['1.1.1.1', '*.example.com'] },
    })
    assert.equal(ok.status, 204)
    const detail = await api('GET', `/sandboxes/${id}`)
    assert.deepEqual((detail.body as { network: unknown }).network, {
      allowOut: ['1.1.1.1', '*.example.com'],
      denyOut: ['0.0.0.0/0'],
    })
    const missing = await api('PUT', '/sandboxes/nosuchsandbox0000000/network', { body: {} })
    assert.equal(missing.status, 404)
  })
})
