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
  InvalidArgumentError,
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

  it('pages through running and paused sandboxes newest first, each once, whatever ends meanwhile', async (t) => {
    const suite = randomUUID()
    const sandboxes: Sandbox[] = []
    for (const n of [0, 1, 2, 3, 4]) {
      sandboxes.push(await createSandbox(t, { metadata: { suite, n: String(n) } }))
    }
    const [s0, s1, s2, s3, s4] = sandboxes as [Sandbox, Sandbox, Sandbox, Sandbox, Sandbox]
    await s1.pause()
    await s3.pause({ keepMemory: false })
    const query = { metadata: { suite } }
    const pages = async (opts: { state?: ('running' | 'paused')[]; limit: number }) => {
      const paginator = Sandbox.list({
        ...server.connection,
        query: { ...query, ...(opts.state === undefined ? {} : { state: opts.state }) },
        limit: opts.limit,
      })
      const seen: string[][] = []
      while (paginator.hasNext) {
        seen.push((await paginator.nextItems()).map((s) => `${s.sandboxId} ${s.state}`))
      }
      return seen
    }
    const line = (s: Sandbox, state: string): string => `${s.sandboxId} ${state}`
    assert.deepEqual(await pages({ limit: 2 }), [
      [line(s4, 'running'), line(s3, 'paused')],
      [line(s2, 'running'), line(s1, 'paused')],
      [line(s0, 'running')],
    ])
    assert.deepEqual(await pages({ state: ['paused'], limit: 1 }), [
      [line(s3, 'paused')],
      [line(s1, 'paused')],
    ])
    assert.deepEqual(await pages({ state: ['running'], limit: 2 }), [
      [line(s4, 'running'), line(s2, 'running')],
      [line(s0, 'running')],
    ])

    // The sandbox that ends a page is killed, another resumed, before the next page is read.
    const paginator = Sandbox.list({ ...server.connection, query, limit: 2 })
    const first = await paginator.nextItems()
    assert.deepEqual(
      first.map((s) => s.sandboxId),
      [s4.sandboxId, s3.sandboxId],
    )
    await s3.kill()
    await Sandbox.connect(s1.sandboxId, server.connection)
    const rest: string[] = []
    while (paginator.hasNext) {
      rest.push(...(await paginator.nextItems()).map((s) => `${s.sandboxId} ${s.state}`))
    }
    assert.deepEqual(rest, [line(s2, 'running'), line(s1, 'running'), line(s0, 'running')])

    const since = (await s2.getInfo()).startedAt
    const fromS2 = await Sandbox.list({
      ...server.connection,
      query: { ...query, startedAfter: since },
      order: 'asc',
    }).nextItems()
    assert.deepEqual(
      fromS2.map((s) => s.sandboxId),
      [s2.sandboxId, s4.sandboxId],
      'startedAfter takes sandboxes started at that time too',
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

/**
 * Fails unless `promise` rejects as the SDK reads a 400 from the API: E2B's SDK (2.51) maps
 * control-plane statuses to classes only for 401, 404 (where a call expects it), 409 (pause),
 * 429 and 503; a 400 is a plain SandboxError with `statusCode` 400 and the server's message.
 */
async function badRequest(promise: Promise<unknown>, message: RegExp): Promise<void> {
  const error = await rejection(promise, SandboxError)
  assert.equal(error.constructor, SandboxError, `${error.name}: ${error.message}`)
  assert.equal(error.statusCode, 400, error.message)
  assert.match(error.message, /^400: /)
  assert.match(error.message, message)
}

describe('invalid arguments', { timeout: 60_000 }, () => {
  it('answers a fork count below 1, above 100 or not whole with a 400 naming count', async (t) => {
    const suite = randomUUID()
    const sandbox = await createSandbox(t, { metadata: { suite } })
    for (const count of [0, -1, 1.5, 101]) {
      await badRequest(sandbox.fork({ count }), /count must be/)
    }
    await badRequest(
      Sandbox.fork(sandbox.sandboxId, { ...server.connection, count: 0 }),
      /count must be between 1 and 100/,
    )
    await badRequest(sandbox.fork({ timeoutMs: -5_000 }), /timeout must be at least 1 second/)
    const forks = await Sandbox.list({
      ...server.connection,
      query: { metadata: { suite } },
    }).nextItems()
    assert.deepEqual(
      forks.map((s) => s.sandboxId),
      [sandbox.sandboxId],
      'no fork was made',
    )
  })

  it('answers timeouts out of range with a 400 giving the range, on every call that takes one', async (t) => {
    const sandbox = await createSandbox(t)
    for (const timeoutMs of [0, -1_000, Number.NaN]) {
      await badRequest(
        Sandbox.create({ ...server.connection, timeoutMs }),
        /timeout must be (at least 1 second|a number of seconds)/,
      )
      await badRequest(sandbox.setTimeout(timeoutMs), /timeout/)
      await badRequest(
        Sandbox.connect(sandbox.sandboxId, { ...server.connection, timeoutMs }),
        /timeout/,
      )
    }
    await badRequest(sandbox.setTimeout(2 * 86_400_000), /between 1 and 86400/)
    await badRequest(
      Sandbox.connect(sandbox.sandboxId, { ...server.connection, timeoutMs: 2 * 86_400_000 }),
      /between 1 and 86400/,
    )
    assert.equal((await sandbox.getInfo()).state, 'running')
  })

  it('answers metadata and env vars that are not strings with a 400 naming the key', async () => {
    const untyped = { n: 1 } as unknown as Record<string, string>
    await badRequest(
      Sandbox.create({ ...server.connection, metadata: untyped }),
      /metadata\.n: values must be strings/,
    )
    await badRequest(
      Sandbox.create({ ...server.connection, envs: untyped }),
      /envVars\.n: values must be strings/,
    )
  })

  it('answers bad lifecycle options: the SDK refuses most itself, the server the rest', async () => {
    const before = await Sandbox.list(server.connection).nextItems()
    const invalid = [
      { onTimeout: 'sleep' },
      { onTimeout: 'kill', autoResume: true },
      { onTimeout: { action: 'kill', keepMemory: false } },
      { onTimeout: { action: 'pause', keepMemory: false }, autoResume: true },
    ] as unknown as NonNullable<SandboxOpts['lifecycle']>[]
    for (const lifecycle of invalid) {
      await rejection(Sandbox.create({ ...server.connection, lifecycle }), InvalidArgumentError)
    }
    await rejection(
      Sandbox.connect('nosuchsandbox0000000', {
        ...server.connection,
        onResume: 'sideways' as 'reboot',
      }),
      InvalidArgumentError,
    )
    // The same requests without the SDK's checks: the server refuses them too.
    const response = await fetch(`${server.url}/v2/sandboxes`, {
      method: 'POST',
      headers: { 'X-API-KEY': server.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({
        templateID: 'base',
        autoPause: true,
        autoPauseMemory: false,
        autoResume: { enabled: true },
      }),
    })
    assert.equal(response.status, 400)
    assert.match(((await response.json()) as { message: string }).message, /autoResume cannot/)
    const pause = await fetch(`${server.url}/sandboxes/nosuchsandbox0000000/pause`, {
      method: 'POST',
      headers: { 'X-API-KEY': server.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ memory: 'no' }),
    })
    assert.equal(pause.status, 400)
    assert.match(((await pause.json()) as { message: string }).message, /memory must be/)
    const after = await Sandbox.list(server.connection).nextItems()
    assert.equal(after.length, before.length, 'nothing was created')
  })

  it('answers bad list queries and metric ranges with a 400 naming the parameter', async (t) => {
    const sandbox = await createSandbox(t)
    await badRequest(
      Sandbox.list({ ...server.connection, limit: 0 }).nextItems(),
      /limit must be at least 1/,
    )
    await badRequest(
      Sandbox.list({ ...server.connection, limit: 1000 }).nextItems(),
      /limit must be at most 100/,
    )
    await badRequest(
      Sandbox.list({
        ...server.connection,
        query: { state: ['sleeping' as 'paused'] },
      }).nextItems(),
      /state must be running or paused/,
    )
    await badRequest(
      Sandbox.list({ ...server.connection, order: 'sideways' as 'asc' }).nextItems(),
      /order must be asc or desc/,
    )
    await badRequest(
      Sandbox.list({ ...server.connection, nextToken: 'not-ours' }).nextItems(),
      /nextToken "not-ours" is not one this server gave out/,
    )
    await badRequest(
      sandbox.getMetrics({ start: new Date(Date.now()), end: new Date(Date.now() - 60_000) }),
      /start must not be after end/,
    )
    await badRequest(Sandbox.listSnapshots({ ...server.connection, limit: 0 }).nextItems(), /limit/)
    await badRequest(sandbox.createSnapshot({ name: '../up' }), /name/)
  })

  it('answers ids that name no sandbox as not found, whatever they hold', async () => {
    for (const id of ['', ' ', '../../health', 'a/b', '%2e%2e', 'x'.repeat(2_000), 'sb_\u00e9']) {
      await rejection(Sandbox.getInfo(id, server.connection), SandboxNotFoundError)
      await rejection(Sandbox.pause(id, server.connection), SandboxNotFoundError)
      await rejection(Sandbox.setTimeout(id, 10_000, server.connection), SandboxNotFoundError)
      assert.equal(await Sandbox.kill(id, server.connection), false, JSON.stringify(id))
    }
  })

  it('answers bad network settings at create with a 400 naming the rule', async () => {
    await badRequest(
      Sandbox.create({ ...server.connection, network: { denyOut: ['example.com'] } }),
      /invalid denied CIDR example\.com/,
    )
    await badRequest(
      Sandbox.create({ ...server.connection, network: { allowOut: ['300.1.1.1/8'] } }),
      /300\.1\.1\.1/,
    )
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
