/**
 * The SDK against a real server (in this process, port 0, temp data dir, real container
 * sandboxes): every sandboxes call, envd through the proxy, and the errors a caller sees.
 */
import assert from 'node:assert/strict'
import { createServer as createHttpServer, type RequestListener } from 'node:http'
import { createServer } from 'node:net'
import { Readable } from 'node:stream'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { runCommand } from '@sandcell/envd-client'
import { loadServerConfig, startServer, type StartedServer } from '@sandcell/server'
import {
  BugError,
  FailedPreconditionError,
  FileNotFoundError,
  SandboxNotFoundError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
} from '@sandcell/shared'
import {
  assertNoLeaks,
  createTestLogger,
  snapshotLeaks,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'
import { createSandcellClient, type SandcellClient } from '../src/index.js'

const apiKey = 'sc_test_sdk_0123456789abcdefghijkl'
let baseline: LeakSnapshot
let dataDir: string
let server: StartedServer
let client: SandcellClient
const log = createTestLogger()

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-sdk-'))
  const config = loadServerConfig({
    env: {},
    flags: {
      port: 0,
      dataDir,
      templatesDir: testTemplatesDir,
      cgroupParent: `sandcell-test-${process.pid}`,
      apiKeys: [apiKey],
      warmPool: {},
      killSandboxesOnExit: true,
      logLevel: 'debug',
    },
  })
  server = await startServer({ config, log })
  client = createSandcellClient({ apiUrl: server.url, apiKey })
})

after(async () => {
  await client.close()
  await server.close({ killSandboxes: true })
  rmSync(dataDir, { recursive: true, force: true })
  await assertNoLeaks(baseline)
})

/** A port nothing listens on: bound, read, released. */
async function freePort(): Promise<number> {
  const probe = createServer()
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
  const address = probe.address()
  await new Promise((resolve) => probe.close(resolve))
  assert.ok(address !== null && typeof address === 'object')
  return address.port
}

async function text(stream: AsyncIterable<Uint8Array>): Promise<string> {
  let out = ''
  for await (const chunk of stream) {
    out += Buffer.from(chunk).toString('utf8')
  }
  return out
}

describe('sandboxes through the SDK', () => {
  it('creates, lists, gets, pauses, resumes and kills a sandbox', async (t) => {
    const run = `run-${process.pid}-${Date.now()}`
    const a = await client.sandboxes.create({
      timeoutMs: 120_000,
      metadata: { run, name: 'a' },
      envVars: { FROM_CREATE: 'yes' },
    })
    t.after(() => client.sandboxes.kill(a.sandboxId).catch(() => undefined))
    const b = await client.sandboxes.create({ metadata: { run, name: 'b' } })
    t.after(() => client.sandboxes.kill(b.sandboxId).catch(() => undefined))
    assert.equal(a.templateId, 'base')
    assert.ok(a.envdAccessToken !== undefined && a.envdAccessToken.length > 0)

    // Pagination with a page of one: two pages, the token in between, no duplicates.
    const first = await client.sandboxes.listPage({ metadata: { run }, limit: 1 })
    assert.equal(first.sandboxes.length, 1)
    assert.ok(first.nextToken !== undefined, 'a second page exists')
    assert.ok((first.totalRunning ?? 0) >= 2)
    const second = await client.sandboxes.listPage({
      metadata: { run },
      limit: 1,
      nextToken: first.nextToken,
    })
    assert.equal(second.sandboxes.length, 1)
    assert.equal(second.nextToken, undefined)
    const iterated: string[] = []
    for await (const sandbox of client.sandboxes.list({ metadata: { run }, limit: 1 })) {
      iterated.push(sandbox.sandboxId)
    }
    assert.deepEqual([...iterated].sort(), [a.sandboxId, b.sandboxId].sort())
    const onlyA: string[] = []
    for await (const sandbox of client.sandboxes.list({ metadata: { run, name: 'a' } })) {
      onlyA.push(sandbox.sandboxId)
    }
    assert.deepEqual(onlyA, [a.sandboxId])

    const detail = await client.sandboxes.get(a.sandboxId)
    assert.equal(detail.state, 'running')
    assert.deepEqual(detail.metadata, { run, name: 'a' })
    assert.ok(detail.startedAt instanceof Date && detail.endAt > detail.startedAt)
    const leftMs = detail.endAt.getTime() - Date.now()
    assert.ok(leftMs > 100_000 && leftMs <= 121_000, `about 120 s left, got ${leftMs} ms`)
    assert.ok(detail.memoryMiB > 0 && detail.cpuCount > 0)

    await client.sandboxes.setTimeout(a.sandboxId, 600_000)
    const extended = await client.sandboxes.get(a.sandboxId)
    assert.ok(extended.endAt.getTime() - Date.now() > 590_000)

    const metrics = await client.sandboxes.metrics(a.sandboxId)
    assert.ok(metrics.every((m) => m.timestamp instanceof Date && m.memTotalBytes >= 0))

    await client.sandboxes.pause(a.sandboxId)
    assert.equal((await client.sandboxes.get(a.sandboxId)).state, 'paused')
    const paused: string[] = []
    for await (const sandbox of client.sandboxes.list({ state: ['paused'], metadata: { run } })) {
      paused.push(sandbox.sandboxId)
    }
    assert.deepEqual(paused, [a.sandboxId])
    await assert.rejects(client.sandboxes.pause(a.sandboxId), FailedPreconditionError)

    const resumed = await client.sandboxes.connect(a.sandboxId, { timeoutMs: 60_000 })
    assert.equal(resumed.resumed, true)
    assert.equal((await client.sandboxes.get(a.sandboxId)).state, 'running')
    assert.equal((await client.sandboxes.connect(a.sandboxId)).resumed, false)

    await client.sandboxes.kill(a.sandboxId)
    await assert.rejects(client.sandboxes.get(a.sandboxId), (err: unknown) => {
      assert.ok(err instanceof SandboxNotFoundError)
      assert.equal(err.message, `sandbox ${a.sandboxId} does not exist or was killed`)
      return true
    })
    await assert.rejects(client.sandboxes.kill(a.sandboxId), SandboxNotFoundError)
  })

  it('runs commands and moves files through the envd proxy', async (t) => {
    const sandbox = await client.sandboxes.create({ envVars: { FROM_CREATE: 'yes' } })
    t.after(() => client.sandboxes.kill(sandbox.sandboxId).catch(() => undefined))
    const envd = client.envd(sandbox)
    t.after(() => envd.close())

    let stdout = ''
    let stderr = ''
    const result = await runCommand(envd, {
      cmd: '/bin/sh',
      args: [
        '-c',
        'read line; echo "$line|$FROM_CREATE|$A|$(pwd)|$(id -un)"; echo oops >&2; exit 3',
      ],
      envs: { A: 'from-call' },
      cwd: '/tmp',
      user: 'root',
      stdin: Buffer.from('hello\n'),
      onStdout: (chunk) => (stdout += Buffer.from(chunk).toString()),
      onStderr: (chunk) => (stderr += Buffer.from(chunk).toString()),
    })
    assert.equal(result.exitCode, 3)
    assert.equal(stdout, 'hello|yes|from-call|/tmp|root\n')
    assert.equal(stderr, 'oops\n')

    const whoami = await runCommand(envd, {
      cmd: 'id',
      args: ['-un'],
      onStdout: (chunk) => (stdout = Buffer.from(chunk).toString()),
    })
    assert.equal(whoami.exitCode, 0)
    assert.equal(stdout, 'user\n', 'the default user')

    const uploaded = await envd.uploadFile('/home/user/notes/a.txt', 'hello file')
    assert.deepEqual(uploaded, { name: 'a.txt', type: 'file', path: '/home/user/notes/a.txt' })
    assert.equal(await text(await envd.downloadFile('/home/user/notes/a.txt')), 'hello file')
    const stat = await envd.filesystem.stat({ path: '/home/user/notes/a.txt' })
    assert.equal(stat.entry?.size, 10n)
    assert.equal(stat.entry?.owner, 'user')
    await assert.rejects(envd.downloadFile('/home/user/missing.txt'), FileNotFoundError)
  })

  it('streams a 16 MiB upload and download', async (t) => {
    const sandbox = await client.sandboxes.create({})
    t.after(() => client.sandboxes.kill(sandbox.sandboxId).catch(() => undefined))
    const envd = client.envd(sandbox)
    t.after(() => envd.close())
    const chunk = new Uint8Array(1024 * 1024).fill(97)
    // A Node stream of 16 MiB, produced as it is read.
    await envd.uploadFile('/tmp/big.bin', Readable.from(Array.from({ length: 16 }, () => chunk)))
    let size = 0
    for await (const part of await envd.downloadFile('/tmp/big.bin')) {
      size += part.byteLength
    }
    assert.equal(size, 16 * 1024 * 1024)
  })

  it('rejects a wrong API key with an unauthorized error naming the server', async () => {
    const wrong = createSandcellClient({
      apiUrl: server.url,
      apiKey: 'sc_wrong_key_0000000000000000',
    })
    try {
      await assert.rejects(wrong.sandboxes.listPage(), (err: unknown) => {
        assert.ok(err instanceof UnauthenticatedError)
        assert.match(err.message, new RegExp(`^unauthorized \\(401\\) by ${server.url}: `))
        return true
      })
    } finally {
      await wrong.close()
    }
  })

  it('says which URL it could not reach when the server is down', async () => {
    const url = `http://127.0.0.1:${await freePort()}`
    const down = createSandcellClient({ apiUrl: url, apiKey })
    try {
      await assert.rejects(down.sandboxes.get('abc'), (err: unknown) => {
        assert.ok(err instanceof UnavailableError)
        assert.match(
          err.message,
          new RegExp(`^cannot reach the sandcell server at ${url} \\(.*ECONNREFUSED`),
        )
        return true
      })
    } finally {
      await down.close()
    }
  })

  it("rejects with the caller's abort reason", async () => {
    const abort = new AbortController()
    abort.abort(new Error('caller gave up'))
    await assert.rejects(client.sandboxes.listPage({ signal: abort.signal }), /caller gave up/)
  })
})

describe('a misbehaving server', () => {
  /** An HTTP server on port 0 answering every request with `handler`. */
  async function serve(handler: RequestListener): Promise<{ url: string; close(): Promise<void> }> {
    const http = createHttpServer(handler)
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
    const address = http.address()
    assert.ok(address !== null && typeof address === 'object')
    return {
      url: `http://127.0.0.1:${address.port}`,
      close: () =>
        new Promise((resolve) => {
          http.closeAllConnections()
          http.close(() => resolve())
        }),
    }
  }

  it('gives a clear error naming each bad field of a malformed body', async (t) => {
    const fake = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify([{ sandboxID: 5, state: 'running' }]))
    })
    t.after(() => fake.close())
    const bad = createSandcellClient({ apiUrl: fake.url, apiKey })
    t.after(() => bad.close())
    await assert.rejects(bad.sandboxes.listPage(), (err: unknown) => {
      assert.ok(err instanceof BugError)
      assert.match(
        err.message,
        new RegExp(
          `^the server answered GET ${fake.url}/v2/sandboxes with an unexpected body: 0\\.sandboxID: `,
        ),
      )
      assert.match(err.message, /; 0\.startedAt: /)
      return true
    })
  })

  it('says so when a body is not JSON at all', async (t) => {
    const fake = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end('<html>proxy login</html>')
    })
    t.after(() => fake.close())
    const bad = createSandcellClient({ apiUrl: fake.url, apiKey })
    t.after(() => bad.close())
    await assert.rejects(bad.sandboxes.get('sb1'), (err: unknown) => {
      assert.ok(err instanceof BugError)
      assert.equal(
        err.message,
        `the server answered GET ${fake.url}/sandboxes/sb1 with a body that is not JSON: "<html>proxy login</html>"`,
      )
      return true
    })
  })

  it('times out a request that gets no answer', async (t) => {
    const fake = await serve(() => undefined)
    t.after(() => fake.close())
    const slow = createSandcellClient({ apiUrl: fake.url, apiKey, requestTimeoutMs: 200 })
    t.after(() => slow.close())
    await assert.rejects(slow.sandboxes.get('sb1'), (err: unknown) => {
      assert.ok(err instanceof TimeoutError)
      assert.equal(err.message, `GET ${fake.url}/sandboxes/sb1 got no answer within 200 ms`)
      return true
    })
  })
})
