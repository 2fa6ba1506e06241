/**
 * The official e2b SDK's control-plane calls against a real `sandcell serve`: create, info,
 * list with filters and pages, timeouts, kill, metrics, the SDK's error classes, and the
 * server's own /health and /metrics.
 */
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import {
  AuthenticationError,
  Sandbox,
  SandboxError,
  SandboxNotFoundError,
  TimeoutError,
  type SandboxOpts,
} from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
})

after(async () => {
  try {
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** Kills the sandbox when the test ends, whatever happened. */
function killAfter(t: TestContext, sandboxId: string): void {
  t.diagnostic(`sandbox ${sandboxId}`)
  t.after(async () => {
    await Sandbox.kill(sandboxId, server.connection)
  })
}

async function createSandbox(t: TestContext, options: SandboxOpts = {}): Promise<Sandbox> {
  const sandbox = await Sandbox.create({ ...server.connection, ...options })
  killAfter(t, sandbox.sandboxId)
  return sandbox
}

/** Fails unless `promise` rejects with an instance of `type`; returns the error. */
async function rejection<E extends Error>(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
): Promise<E> {
  const error = await promise.then(
    (value) => assert.fail(`expected ${type.name}, got ${JSON.stringify(value)}`),
    (err: unknown) => err,
  )
  assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`)
  return error
}

describe('sandboxes', { timeout: 60_000 }, () => {
  it('creates a sandbox from the base template by default and describes it', async (t) => {
    const sandbox = await createSandbox(t, { metadata: { purpose: 'info' }, timeoutMs: 120_000 })
    assert.equal(await sandbox.isRunning(), true)
    const info = await sandbox.getInfo()
    assert.equal(info.sandboxId, sandbox.sandboxId)
    assert.equal(info.templateId, 'base')
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { purpose: 'info' })
    assert.equal(info.envdVersion, '0.6.4')
    assert.ok(info.cpuCount >= 1)
    assert.ok(info.memoryMB >= 64)
    assert.ok(Math.abs(Date.now() - info.startedAt.getTime()) < 30_000)
    assert.equal(info.endAt.getTime() - info.startedAt.getTime(), 120_000)
    assert.deepEqual(await Sandbox.getInfo(sandbox.sandboxId, server.connection), info)
  })

  it('lists sandboxes by metadata and state, page by page', async (t) => {
    const suite = randomUUID()
    const sandboxes = await Promise.all(
      [0, 1, 2].map((n) => createSandbox(t, { metadata: { suite, n: String(n) } })),
    )
    const ids = sandboxes.map((s) => s.sandboxId).sort()
    const query = { metadata: { suite } }

    const paginator = Sandbox.list({ ...server.connection, query, limit: 2 })
    assert.equal(paginator.hasNext, true)
    const first = await paginator.nextItems()
    assert.equal(first.length, 2)
    assert.equal(paginator.hasNext, true)
    const second = await paginator.nextItems()
    assert.equal(second.length, 1)
    assert.equal(paginator.hasNext, false)
    assert.deepEqual([...first, ...second].map((s) => s.sandboxId).sort(), ids)
    for (const listed of [...first, ...second]) {
      assert.equal(listed.state, 'running')
      assert.equal(listed.metadata.suite, suite)
    }

    const paused = sandboxes[1] as Sandbox
    assert.equal(await paused.pause(), true)
    const pausedOnly = await Sandbox.list({
      ...server.connection,
      query: { ...query, state: ['paused'] },
    }).nextItems()
    assert.deepEqual(
      pausedOnly.map((s) => [s.sandboxId, s.state]),
      [[paused.sandboxId, 'paused']],
    )
    const runningOnly = await Sandbox.list({
      ...server.connection,
      query: { ...query, state: ['running'] },
    }).nextItems()
    assert.deepEqual(
      runningOnly.map((s) => s.sandboxId).sort(),
      ids.filter((id) => id !== paused.sandboxId),
    )
    const both = await Sandbox.list({ ...server.connection, query }).nextItems()
    assert.equal(both.length, 3)

    const newestFirst = await Sandbox.list({
      ...server.connection,
      query,
      order: 'desc',
    }).nextItems()
    const started = newestFirst.map((s) => s.startedAt.getTime())
    assert.deepEqual(
      started,
      [...started].sort((a, b) => b - a),
    )
  })

  it('lists sandboxes by template and by start time', async (t) => {
    const since = new Date()
    const debian = await createSandbox(t, { template: 'debian' })
    const base = await createSandbox(t)
    const byTemplate = await Sandbox.list({
      ...server.connection,
      query: { template: 'debian' },
    }).nextItems()
    assert.deepEqual(
      byTemplate.map((s) => [s.sandboxId, s.templateId]),
      [[debian.sandboxId, 'debian']],
    )
    const recent = await Sandbox.list({
      ...server.connection,
      query: { startedAfter: since },
    }).nextItems()
    assert.deepEqual(
      recent.map((s) => s.sandboxId).sort(),
      [debian.sandboxId, base.sandboxId].sort(),
    )
  })

  it('filters by metadata keys and values that need URL encoding', async (t) => {
    const value = `team/a b&c=${randomUUID()}`
    const sandbox = await createSandbox(t, { metadata: { 'owner tag': value } })
    const found = await Sandbox.list({
      ...server.connection,
      query: { metadata: { 'owner tag': value } },
    }).nextItems()
    assert.deepEqual(
      found.map((s) => s.sandboxId),
      [sandbox.sandboxId],
    )
  })

  it('sets a new timeout: endAt moves, and the sandbox is gone once it passes', async (t) => {
    const sandbox = await createSandbox(t, { timeoutMs: 300_000 })
    const before = (await sandbox.getInfo()).endAt.getTime()

    await sandbox.setTimeout(600_000)
    const later = (await sandbox.getInfo()).endAt.getTime()
    assert.ok(later > before + 250_000, `endAt moved from ${before} to ${later}`)

    const askedAt = Date.now()
    await sandbox.setTimeout(2_000)
    const soon = (await sandbox.getInfo()).endAt.getTime()
    assert.ok(soon >= askedAt + 1_000 && soon <= Date.now() + 2_000, `endAt ${soon}`)

    await waitFor('the sandbox to end at its timeout', async () => !(await sandbox.isRunning()), {
      timeoutMs: 15_000,
    })
    assert.ok(Date.now() >= soon - 100, 'it did not end early')
    await rejection(sandbox.getInfo(), SandboxNotFoundError)
    const listed = await Sandbox.list(server.connection).nextItems()
    assert.ok(listed.every((s) => s.sandboxId !== sandbox.sandboxId))
  })

  it('gives a sandbox created without a timeout five minutes', async (t) => {
    const sandbox = await createSandbox(t)
    const info = await sandbox.getInfo()
    assert.equal(info.endAt.getTime() - info.startedAt.getTime(), 300_000)
  })

  it('only extends the lifetime of a running sandbox on connect', async (t) => {
    const sandbox = await createSandbox(t, { timeoutMs: 600_000 })
    const endAt = (await sandbox.getInfo()).endAt.getTime()
    await Sandbox.connect(sandbox.sandboxId, { ...server.connection, timeoutMs: 10_000 })
    assert.equal((await sandbox.getInfo()).endAt.getTime(), endAt)
    await Sandbox.connect(sandbox.sandboxId, { ...server.connection, timeoutMs: 1_200_000 })
    assert.ok((await sandbox.getInfo()).endAt.getTime() > endAt + 500_000)
  })

  it('kills a sandbox: not running, not found, and a second kill is false', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.files.write('/tmp/before-kill.txt', 'x')
    const running = await sandbox.commands.run('sleep 60', { background: true })
    const cut = running.wait().then(
      () => undefined,
      (err: unknown) => err,
    )
    assert.equal(await sandbox.kill(), true)
    // The command's stream ends with the SDK's "the sandbox was killed" error.
    assert.ok((await cut) instanceof TimeoutError, String(await cut))
    assert.equal(await sandbox.isRunning(), false)
    await rejection(sandbox.getInfo(), SandboxNotFoundError)
    await rejection(sandbox.commands.run('true'), SandboxNotFoundError)
    await assert.rejects(sandbox.files.read('/tmp/before-kill.txt'))
    assert.equal(await Sandbox.kill(sandbox.sandboxId, server.connection), false)
    assert.equal(await sandbox.kill(), false)
  })

  it('reports CPU, memory and disk metrics', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.commands.run('head -c 4000000 /dev/zero > /home/user/disk-filler')
    const metrics = await sandbox.getMetrics()
    assert.ok(metrics.length >= 1)
    const last = metrics[metrics.length - 1]
    assert.ok(last !== undefined)
    assert.ok(last.timestamp instanceof Date)
    assert.ok(Math.abs(Date.now() - last.timestamp.getTime()) < 60_000)
    assert.ok(last.cpuCount >= 1)
    assert.ok(last.cpuUsedPct >= 0 && last.cpuUsedPct <= 100)
    assert.ok(last.memUsed > 0 && last.memUsed <= last.memTotal, JSON.stringify(last))
    assert.ok(last.diskUsed > 0 && last.diskUsed <= last.diskTotal, JSON.stringify(last))
    const ranged = await Sandbox.getMetrics(sandbox.sandboxId, {
      ...server.connection,
      start: new Date(Date.now() - 60_000),
      end: new Date(Date.now() + 1_000),
    })
    assert.ok(ranged.length >= 1)
  })

  it("refuses bad network rules with E2B's 400 and message, and unsupported ones clearly", async (t) => {
    const sandbox = await createSandbox(t)
    const bad = await rejection(sandbox.updateNetwork({ denyOut: ['example.com'] }), SandboxError)
    assert.equal(bad.statusCode, 400)
    assert.match(bad.message, /invalid denied CIDR example\.com/)
    const proxy = await rejection(
      sandbox.updateNetwork({ egressProxy: { address: 'proxy.example.com:1080' } }),
      SandboxError,
    )
    assert.equal(proxy.statusCode, 400)
    assert.match(proxy.message, /egressProxy is not supported/)
    await sandbox.updateNetwork({ denyOut: ['0.0.0.0/0'] })
    const info = await sandbox.getInfo()
    assert.deepEqual(info.network?.denyOut, ['0.0.0.0/0'])
  })

  it('reads E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY from the environment', async (t) => {
    const names = ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_API_KEY'] as const
    const saved = names.map((name) => process.env[name])
    t.after(() => {
      names.forEach((name, i) => {
        const value = saved[i]
        if (value === undefined) {
          delete process.env[name]
        } else {
          process.env[name] = value
        }
      })
    })
    process.env.E2B_API_URL = server.url
    process.env.E2B_SANDBOX_URL = server.url
    process.env.E2B_API_KEY = server.apiKey
    const sandbox = await Sandbox.create()
    killAfter(t, sandbox.sandboxId)
    assert.equal((await sandbox.commands.run('echo from-env')).stdout, 'from-env\n')
  })
})

describe('errors', { timeout: 60_000 }, () => {
  it('rejects a wrong API key with AuthenticationError on every call', async (t) => {
    const wrong = { ...server.connection, apiKey: 'sc_wrong_0123456789abcdefghijklm' }
    const existing = await createSandbox(t)
    await rejection(Sandbox.create(wrong), AuthenticationError)
    await rejection(Sandbox.list(wrong).nextItems(), AuthenticationError)
    await rejection(Sandbox.getInfo(existing.sandboxId, wrong), AuthenticationError)
    await rejection(Sandbox.connect(existing.sandboxId, wrong), AuthenticationError)
    await rejection(Sandbox.kill(existing.sandboxId, wrong), AuthenticationError)
    await rejection(Sandbox.setTimeout(existing.sandboxId, 1_000, wrong), AuthenticationError)
    await rejection(Sandbox.pause(existing.sandboxId, wrong), AuthenticationError)
    assert.equal(await existing.isRunning(), true, 'nothing a wrong key asked for happened')
    assert.equal((await existing.getInfo()).state, 'running')
  })

  it('throws SandboxNotFoundError for a sandbox that does not exist', async () => {
    const id = 'nosuchsandbox0000000'
    await rejection(Sandbox.getInfo(id, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.connect(id, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.setTimeout(id, 10_000, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.pause(id, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.getMetrics(id, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.createSnapshot(id, server.connection), SandboxNotFoundError)
    await rejection(Sandbox.fork(id, server.connection), SandboxNotFoundError)
    assert.equal(await Sandbox.kill(id, server.connection), false)
  })

  it('rejects an unknown template with a 404 that names it and the known ones', async () => {
    const error = await rejection(
      Sandbox.create('no-such-template', server.connection),
      SandboxError,
    )
    assert.equal(error.statusCode, 404)
    assert.match(error.message, /no-such-template/)
    assert.match(error.message, /base/)
  })

  it('rejects a metadata filter that is not valid percent-encoding with a 400', async () => {
    // After the query's own decoding and the form's, `%E0%A4` is left: a broken UTF-8 sequence.
    const filter = encodeURIComponent('key=%25E0%25A4')
    const response = await fetch(`${server.url}/v2/sandboxes?metadata=${filter}`, {
      headers: { 'X-API-KEY': server.apiKey },
    })
    assert.equal(response.status, 400)
    const body = (await response.json()) as { code: number; message: string }
    assert.equal(body.code, 400)
  })

  it('rejects a timeout beyond the maximum with a 400 that gives the range', async () => {
    const error = await rejection(
      Sandbox.create({ ...server.connection, timeoutMs: 2 * 86_400_000 }),
      SandboxError,
    )
    assert.equal(error.statusCode, 400)
    assert.match(error.message, /between 1 and 86400/)
  })
})

describe('server endpoints', { timeout: 60_000 }, () => {
  it('answers /health without an API key', async () => {
    const response = await fetch(`${server.url}/health`)
    assert.equal(response.status, 200)
    const body = (await response.json()) as { status: string; sandboxes: Record<string, number> }
    assert.equal(body.status, 'ok')
    assert.equal(typeof body.sandboxes.running, 'number')
    assert.equal(typeof body.sandboxes.paused, 'number')
  })

  it('serves Prometheus metrics without an API key: sandboxes, create times, proxy bytes', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.commands.run('echo traffic')
    const response = await fetch(`${server.url}/metrics`)
    assert.equal(response.status, 200)
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain/)
    const text = await response.text()
    const value = (pattern: RegExp): number => {
      const match = pattern.exec(text)
      assert.ok(match?.[1] !== undefined, `${pattern} in\n${text.slice(0, 3000)}`)
      return Number(match[1])
    }
    assert.match(text, /^# TYPE sandcell_sandboxes gauge$/m)
    assert.ok(value(/^sandcell_sandboxes\{state="running"\} (\d+)$/m) >= 1)
    assert.match(text, /^# TYPE sandcell_sandbox_create_seconds histogram$/m)
    assert.ok(value(/^sandcell_sandbox_create_seconds_count (\d+)$/m) >= 1)
    assert.match(text, /^# TYPE sandcell_proxy_bytes_total counter$/m)
    assert.ok(value(/^sandcell_proxy_bytes_total\{direction="in"\} (\d+)$/m) > 0)
    assert.ok(value(/^sandcell_proxy_bytes_total\{direction="out"\} (\d+)$/m) > 0)
  })
})
