// The envd proxy in front of real agents (the built bundle on Unix sockets): routing by header,
// Host and signed URL, streaming both ways, the 502s the e2b SDK relies on, attacks between
// sandboxes, client aborts, dead agents, the official SDK through it, and its overhead.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type RequestOptions,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, type Readable } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import { create, type DescService } from '@bufbuild/protobuf'
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from '@connectrpc/connect'
import { createConnectTransport } from '@connectrpc/connect-node'
import { Sandbox } from 'e2b'
import {
  Filesystem,
  Process,
  Signal,
  StreamInputRequestSchema,
  type StartResponse,
  type StreamInputRequest,
} from '@sandcell/protocol'
import { createSilentLogger, newSandboxId } from '@sandcell/shared'
import { assertNoLeaks, snapshotLeaks } from '@sandcell/test-utils'
import {
  createEnvdProxy,
  type EnvdProxy,
  type EnvdRequestSample,
} from '../src/envd-proxy/envd-proxy.js'
import type { ProxyRegistry, ProxyTarget } from '../src/envd-proxy/proxy-target.js'

const agentBundle = new URL('../../agent/bundle/agent.mjs', import.meta.url).pathname
const userId = 1000
const domain = 'sandcell.local'
/** The envd version the SDK is told: octet-stream uploads, default user from envd. */
const sdkEnvdVersion = '0.5.7'

describe('envd proxy', { timeout: 120_000 }, () => {
  const baseline = snapshotLeaks()
  const targets = new Map<string, ProxyTarget>()
  const registry: ProxyRegistry = {
    get: (sandboxId) => targets.get(sandboxId),
    list: () => targets.values(),
    resume: (id: string) => {
      const target = targets.get(id)
      if (target !== undefined) {
        target.state = 'running'
      }
      return Promise.resolve()
    },
  }
  const samples: EnvdRequestSample[] = []
  const proxy: EnvdProxy = createEnvdProxy({
    registry,
    log: createSilentLogger(),
    domain,
    metrics: { onRequest: (sample) => samples.push(sample) },
  })
  const clientAgent = new Agent({ keepAlive: true })
  let server: TestServer
  let a: TestAgent
  let b: TestAgent
  const started: TestAgent[] = []

  const register = (agent: TestAgent): void => {
    targets.set(agent.sandboxId, agent.target)
  }
  /** A Connect client that reaches `agent` through the proxy, as the SDK does. */
  const viaProxy = <S extends DescService>(
    service: S,
    agent: TestAgent,
    headers: Record<string, string> = {},
  ): Client<S> =>
    createClient(
      service,
      createConnectTransport({
        baseUrl: server.url,
        httpVersion: '1.1',
        nodeOptions: { agent: clientAgent },
        interceptors: [
          withHeaders({
            'e2b-sandbox-id': agent.sandboxId,
            'e2b-sandbox-port': '49983',
            'x-access-token': agent.accessToken,
            ...headers,
          }),
        ],
      }),
    )
  /** A plain HTTP request to the proxy. */
  const send = (
    method: string,
    path: string,
    options: { headers?: Record<string, string>; body?: string | Buffer | Readable } = {},
  ): Promise<HttpResult> =>
    sendHttp({ host: '127.0.0.1', port: server.port, method, path, agent: clientAgent }, options)
  /** An e2b SDK sandbox object for `agent` with the proxy as its sandbox URL. */
  const sdkSandbox = (agent: TestAgent): Sandbox =>
    new Sandbox({
      sandboxId: agent.sandboxId,
      envdVersion: sdkEnvdVersion,
      envdAccessToken: agent.accessToken,
      sandboxUrl: server.url,
      apiKey: 'unused',
      domain,
    })

  before(async () => {
    server = await startProxyServer(proxy)
    a = await startAgent()
    started.push(a)
    b = await startAgent()
    started.push(b)
    register(a)
    register(b)
    writeFileSync(a.host('home/user/who.txt'), 'sandbox a')
    writeFileSync(b.host('home/user/who.txt'), 'sandbox b')
  })

  after(async () => {
    await server.close()
    await proxy.close()
    clientAgent.destroy()
    await Promise.all(started.map((agent) => agent.dispose()))
    await assertNoLeaks(baseline)
  })

  describe('routing', () => {
    it('routes by the E2b-Sandbox-Id header and leaves other requests to the API', async () => {
      const health = await send('GET', '/health', { headers: { 'e2b-sandbox-id': a.sandboxId } })
      assert.equal(health.status, 204)
      const file = await send('GET', '/files?path=/home/user/who.txt', {
        headers: { 'e2b-sandbox-id': b.sandboxId, 'x-access-token': b.accessToken },
      })
      assert.equal(file.status, 200, file.text())
      assert.equal(file.text(), 'sandbox b')
      const api = await send('GET', '/sandboxes')
      assert.equal(api.status, 404)
      assert.deepEqual(api.json(), { api: true })
    })

    it('routes by a PORT-SANDBOXID.DOMAIN host and by PORT-SANDBOXID.localhost', async () => {
      for (const host of [
        `49983-${a.sandboxId}.${domain}`,
        `49983-${a.sandboxId}.localhost:${server.port}`,
      ]) {
        const file = await send('GET', '/files?path=/home/user/who.txt', {
          headers: { host, 'x-access-token': a.accessToken },
        })
        assert.equal(file.status, 200, host)
        assert.equal(file.text(), 'sandbox a')
      }
      const api = await send('GET', '/health', { headers: { host: `api.${domain}` } })
      assert.deepEqual(api.json(), { api: true })
    })

    it('answers 502 with envd-shaped JSON for an unknown sandbox', async () => {
      const unknown = newSandboxId()
      const res = await send('GET', '/health', { headers: { 'e2b-sandbox-id': unknown } })
      assert.equal(res.status, 502)
      assert.match(String(res.headers['content-type']), /^application\/json/)
      assert.deepEqual(res.json(), {
        code: 502,
        message: 'The sandbox was not found',
        sandboxId: unknown,
      })
      const byHost = await send('GET', '/health', {
        headers: { host: `49983-${unknown}.${domain}` },
      })
      assert.equal(byHost.status, 502)
    })

    it('resumes a paused sandbox that asked for autoResume and serves the request', async () => {
      const sleeper = newSandboxId()
      targets.set(sleeper, { ...a.target, sandboxId: sleeper, state: 'paused', autoResume: true })
      try {
        const res = await send('GET', '/health', { headers: { 'e2b-sandbox-id': sleeper } })
        assert.equal(res.status, 204)
        assert.equal(targets.get(sleeper)?.state, 'running')
      } finally {
        targets.delete(sleeper)
      }
    })

    it('answers 502 for a paused sandbox and says how to resume it', async () => {
      const paused = newSandboxId()
      targets.set(paused, { ...a.target, sandboxId: paused, state: 'paused' })
      try {
        const res = await send('GET', '/health', { headers: { 'e2b-sandbox-id': paused } })
        assert.equal(res.status, 502)
        assert.match(res.json<{ message: string }>().message, /is paused.*Sandbox\.connect/)
      } finally {
        targets.delete(paused)
      }
    })

    it('answers 502 "port is not open" for another port of a sandbox without a network', async () => {
      const attempts: Record<string, string>[] = [
        { 'e2b-sandbox-id': a.sandboxId, 'e2b-sandbox-port': '3000' },
        { host: `3000-${a.sandboxId}.${domain}` },
      ]
      for (const headers of attempts) {
        const res = await send('GET', '/health', { headers })
        assert.equal(res.status, 502)
        assert.deepEqual(res.json(), {
          sandboxId: a.sandboxId,
          message: 'The sandbox is running but port is not open',
          port: 3000,
          code: 502,
        })
      }
    })

    it("rejects envd's /init from outside: only the server sets a sandbox's token", async () => {
      const res = await send('POST', '/init', {
        headers: { 'e2b-sandbox-id': a.sandboxId, 'content-type': 'application/json' },
        body: JSON.stringify({ accessToken: 'stolen' }),
      })
      assert.equal(res.status, 403)
      const health = await viaProxy(Process, a).list({})
      assert.ok(Array.isArray(health.processes))
    })

    it('maps a 502 to Connect unavailable for RPC clients', async () => {
      const ghost = { ...a, sandboxId: newSandboxId() }
      const error = await viaProxy(Process, ghost)
        .list({})
        .then(
          () => undefined,
          (err: unknown) => err,
        )
      assert.ok(error instanceof ConnectError, String(error))
      assert.equal(error.code, Code.Unavailable)
      assert.match(error.rawMessage, /The sandbox was not found/)
    })
  })

  describe('streaming', () => {
    it('serves a Connect unary call and a server-streaming Process.Start', async () => {
      const process = viaProxy(Process, a)
      const { processes } = await process.list({})
      assert.ok(Array.isArray(processes))
      const output = await collectProcess(
        process.start({ process: { cmd: '/bin/bash', args: ['-c', 'echo out; echo err >&2'] } }),
      )
      assert.equal(output.stdout, 'out\n')
      assert.equal(output.stderr, 'err\n')
      assert.equal(output.exitCode, 0)
    })

    it('keeps a long stream flowing event by event, keepalives included', async () => {
      const process = viaProxy(Process, a, { 'keepalive-ping-interval': '1' })
      const started = performance.now()
      const arrivals: number[] = []
      let keepalives = 0
      let stdout = ''
      for await (const { event } of process.start({
        process: {
          cmd: '/bin/bash',
          args: ['-c', 'for i in 1 2 3 4 5 6; do echo $i; sleep 0.4; done; sleep 1.2'],
        },
      })) {
        if (event?.event.case === 'data' && event.event.value.output.case === 'stdout') {
          arrivals.push(performance.now() - started)
          stdout += Buffer.from(event.event.value.output.value).toString()
        } else if (event?.event.case === 'keepalive') {
          keepalives += 1
        }
      }
      assert.equal(stdout, '1\n2\n3\n4\n5\n6\n')
      const first = arrivals[0] ?? 0
      const last = arrivals.at(-1) ?? 0
      assert.ok(
        last - first > 1500,
        `events arrived as produced, not at the end: ${arrivals.join(', ')}`,
      )
      assert.ok(keepalives >= 1, 'keepalives pass through')
    })

    it('streams a client-streaming StreamInput into a running process', async () => {
      const process = viaProxy(Process, a)
      const tag = `cat-${randomUUID()}`
      const events = iterate(
        process.start({ process: { cmd: '/bin/cat', args: [] }, stdin: true, tag }),
      )
      assert.equal((await nextValue(events))?.event?.event.case, 'start')
      const chunks = ['hello ', 'through ', 'the proxy\n']
      async function* input(): AsyncGenerator<StreamInputRequest> {
        const selector = { case: 'tag' as const, value: tag }
        yield create(StreamInputRequestSchema, {
          event: { case: 'start', value: { process: { selector } } },
        })
        for (const chunk of chunks) {
          // Spread out in time, so the body really arrives in pieces.
          await new Promise((resolve) => setTimeout(resolve, 50))
          yield create(StreamInputRequestSchema, {
            event: {
              case: 'data',
              value: { input: { input: { case: 'stdin', value: Buffer.from(chunk) } } },
            },
          })
        }
      }
      await process.streamInput(input())
      await process.closeStdin({ process: { selector: { case: 'tag', value: tag } } })
      const rest = await collectProcess({ [Symbol.asyncIterator]: () => events })
      assert.equal(rest.stdout, chunks.join(''))
      assert.equal(rest.exitCode, 0)
    })

    it('streams a multi-MB upload to the agent as it arrives, and the download back', async () => {
      const sizeBytes = 24 * 1024 * 1024
      const chunk = randomBytes(64 * 1024)
      const path = '/home/user/big.bin'
      const body = new PassThrough()
      const upload = send('POST', `/files?path=${encodeURIComponent(path)}`, {
        headers: {
          'e2b-sandbox-id': a.sandboxId,
          'x-access-token': a.accessToken,
          'content-type': 'application/octet-stream',
        },
        body,
      })
      const hash = createHash('sha256')
      const writeChunks = async (count: number): Promise<void> => {
        for (let i = 0; i < count; i += 1) {
          hash.update(chunk)
          if (!body.write(chunk)) {
            await new Promise((resolve) => body.once('drain', resolve))
          }
        }
      }
      const total = sizeBytes / chunk.length
      await writeChunks(total / 3)
      // The first third is on the sandbox's disk while the rest is not even sent yet.
      await waitFor('the upload to reach the agent', () => {
        try {
          return statSync(a.host(path)).size > 0 ? true : undefined
        } catch {
          return undefined
        }
      })
      await writeChunks(total - total / 3)
      body.end()
      const uploaded = await upload
      assert.equal(uploaded.status, 200, uploaded.text())
      assert.deepEqual(uploaded.json(), [{ name: 'big.bin', type: 'file', path }])
      const digest = hash.digest('hex')
      assert.equal(statSync(a.host(path)).size, sizeBytes)

      const download = await send('GET', `/files?path=${encodeURIComponent(path)}`, {
        headers: { 'e2b-sandbox-id': a.sandboxId, 'x-access-token': a.accessToken },
      })
      assert.equal(download.status, 200)
      assert.equal(createHash('sha256').update(download.body).digest('hex'), digest)

      const uploadSample = samples.find((s) => s.bytesIn === sizeBytes)
      assert.equal(uploadSample?.status, 200)
      assert.equal(uploadSample.sandboxId, a.sandboxId)
      const downloadSample = samples.find((s) => s.bytesOut === sizeBytes)
      assert.equal(downloadSample?.status, 200)
    })

    it("passes sandcell's POST /archive through to the agent like /files", async () => {
      const source = mkdtempSync(join(tmpdir(), 'sandcell-envd-proxy-archive-'))
      try {
        mkdirSync(join(source, 'site'))
        writeFileSync(join(source, 'site/index.html'), 'through the proxy')
        const archive = execFileSync('tar', ['-czf', '-', '-C', source, 'site'])
        const res = await send('POST', '/archive?path=/home/user/unpacked&username=user', {
          headers: { 'e2b-sandbox-id': a.sandboxId, 'x-access-token': a.accessToken },
          body: archive,
        })
        assert.equal(res.status, 200, res.text())
        assert.deepEqual(res.json(), { entries: 2, bytes: 'through the proxy'.length })
        const file = a.host('home/user/unpacked/site/index.html')
        assert.equal(readFileSync(file, 'utf8'), 'through the proxy')
        assert.equal(statSync(file).uid, userId)
      } finally {
        rmSync(source, { recursive: true, force: true })
      }
    })

    it('sends a signed URL without a sandbox id to the sandbox whose token signed it', async () => {
      for (const agent of [a, b]) {
        const url = await sdkSandbox(agent).downloadUrl('/home/user/who.txt')
        assert.ok(!url.includes(agent.sandboxId), 'the URL names no sandbox')
        const res = await fetch(url)
        assert.equal(res.status, 200)
        assert.equal(await res.text(), agent === a ? 'sandbox a' : 'sandbox b')
      }
      const uploadUrl = await sdkSandbox(b).uploadUrl('/home/user/signed.txt', {
        useSignatureExpiration: 60,
      })
      const res = await fetch(uploadUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: 'written through a signed URL',
      })
      assert.equal(res.status, 200, await res.clone().text())
      assert.equal(
        readFileSync(b.host('home/user/signed.txt'), 'utf8'),
        'written through a signed URL',
      )
    })
  })

  describe('attacks', () => {
    it("cannot use sandbox A's token on sandbox B, and A never sees the request", async () => {
      const aLogBefore = a.logs().length
      const marker = `/tmp/cross-${randomUUID()}`
      const error = await iterate(
        viaProxy(Process, b, { 'x-access-token': a.accessToken }).start({
          process: { cmd: '/bin/touch', args: [marker] },
        }),
      )
        .next()
        .then(
          () => undefined,
          (err: unknown) => err,
        )
      assert.ok(error instanceof ConnectError, String(error))
      assert.equal(error.code, Code.Unauthenticated)
      const file = await send('GET', '/files?path=/home/user/who.txt', {
        headers: { 'e2b-sandbox-id': b.sandboxId, 'x-access-token': a.accessToken },
      })
      assert.equal(file.status, 401)
      assert.match(b.logs(), /request without a valid access token/)
      assert.equal(a.logs().slice(aLogBefore), '', 'sandbox A saw nothing')
      assert.throws(() => statSync(a.host(marker)), { code: 'ENOENT' })
      assert.throws(() => statSync(b.host(marker)), { code: 'ENOENT' })
    })

    it("cannot read sandbox B's file with a URL signed by A's token", async () => {
      writeFileSync(b.host('home/user/secret.txt'), 'b secret')
      const url = new URL(await sdkSandbox(a).downloadUrl('/home/user/secret.txt'))
      // Aimed at B explicitly: B's agent checks the signature against its own token.
      const aimed = await send('GET', `${url.pathname}${url.search}`, {
        headers: { 'e2b-sandbox-id': b.sandboxId },
      })
      assert.equal(aimed.status, 401)
      assert.ok(!aimed.text().includes('b secret'))
      // Unaimed: the signature leads to A, which has no such file.
      const unaimed = await send('GET', `${url.pathname}${url.search}`)
      assert.equal(unaimed.status, 404)
      assert.ok(!unaimed.text().includes('b secret'))
      // A forged signature matches nobody.
      const forged = await send(
        'GET',
        `/files?path=/home/user/secret.txt&signature=v1_${'A'.repeat(43)}`,
      )
      assert.equal(forged.status, 401)
    })

    it('rejects a repeated E2b-Sandbox-Id header instead of picking one', async () => {
      const res = await sendHttp(
        {
          host: '127.0.0.1',
          port: server.port,
          method: 'GET',
          path: '/files?path=/home/user/who.txt',
          // A raw header list, so the name really goes out twice.
          headers: [
            'host', `127.0.0.1:${server.port}`,
            'e2b-sandbox-id', a.sandboxId,
            'E2B-Sandbox-Id', b.sandboxId,
            'x-access-token', b.accessToken,
          ], // prettier-ignore
        },
        {},
      )
      assert.equal(res.status, 400)
      assert.match(res.json<{ message: string }>().message, /must be given once/)
    })

    it('uses the header when it and the Host disagree, and never an unregistered id', async () => {
      const both = await send('GET', '/files?path=/home/user/who.txt', {
        headers: {
          host: `49983-${a.sandboxId}.${domain}`,
          'e2b-sandbox-id': b.sandboxId,
          'x-access-token': b.accessToken,
        },
      })
      assert.equal(both.text(), 'sandbox b')
      const unregistered = await send('GET', '/files?path=/home/user/who.txt', {
        headers: {
          host: `49983-${a.sandboxId}.${domain}`,
          'e2b-sandbox-id': newSandboxId(),
          'x-access-token': a.accessToken,
        },
      })
      assert.equal(unregistered.status, 502)
    })

    it('passes a traversing path through unchanged, and the agent answers from its root', async () => {
      const fakePasswd = readFileSync(a.host('etc/passwd'), 'utf8')
      assert.notEqual(fakePasswd, readFileSync('/etc/passwd', 'utf8'))
      for (const path of [
        '/files?path=../../../../../../etc/passwd',
        '/../../files?path=/etc/passwd',
        '/files?path=%2F..%2F..%2F..%2Fetc%2Fpasswd',
      ]) {
        const res = await send('GET', path, {
          headers: { 'e2b-sandbox-id': a.sandboxId, 'x-access-token': a.accessToken },
        })
        assert.equal(res.status, 200, `${path}: ${res.text()}`)
        assert.equal(res.text(), fakePasswd, path)
      }
    })
  })

  describe('failures', () => {
    it('aborts the upstream request when the client goes away mid-stream', async (t) => {
      const d = await startAgent()
      t.after(() => d.dispose())
      register(d)
      t.after(() => targets.delete(d.sandboxId))
      await waitFor('no connections to the new agent', () =>
        connectionsTo(d.socketPath) === 0 ? true : undefined,
      )
      const tag = `sleeper-${randomUUID()}`
      const controller = new AbortController()
      const events = iterate(
        viaProxy(Process, d).start(
          { process: { cmd: '/bin/sleep', args: ['30'] }, tag },
          { signal: controller.signal },
        ),
      )
      assert.equal((await nextValue(events))?.event?.event.case, 'start')
      assert.equal(connectionsTo(d.socketPath), 1, 'the stream holds one agent connection')
      controller.abort()
      await assert.rejects(events.next())
      await waitFor('the proxy to close the agent connection', () =>
        connectionsTo(d.socketPath) === 0 ? true : undefined,
      )
      // envd semantics: the process outlives the stream that started it.
      const process = viaProxy(Process, d)
      const { processes } = await process.list({})
      assert.ok(processes.some((p) => p.tag === tag))
      await process.sendSignal({
        process: { selector: { case: 'tag', value: tag } },
        signal: Signal.SIGKILL,
      })
    })

    it('cuts a stream off and answers 502 when the agent dies', async (t) => {
      const e = await startAgent()
      t.after(() => e.dispose())
      register(e)
      t.after(() => targets.delete(e.sandboxId))
      const events = iterate(viaProxy(Filesystem, e).watchDir({ path: '/tmp', recursive: false }))
      assert.equal((await nextValue(events))?.event.case, 'start')
      await e.kill()
      await assert.rejects(async () => {
        for (;;) {
          const next = await events.next()
          if (next.done === true) {
            return
          }
        }
      }, ConnectError)
      const health = await send('GET', '/health', { headers: { 'e2b-sandbox-id': e.sandboxId } })
      assert.equal(health.status, 502)
      assert.match(health.json<{ message: string }>().message, /is not running: its agent socket/)
    })
  })

  it('serves the official e2b SDK: commands, files, isRunning', async (t) => {
    const f = await startAgent()
    t.after(() => f.dispose())
    register(f)
    t.after(() => targets.delete(f.sandboxId))
    const sandbox = sdkSandbox(f)
    const result = await sandbox.commands.run('echo hi')
    assert.equal(result.stdout, 'hi\n')
    assert.equal(result.exitCode, 0)
    await sandbox.files.write('/home/user/sdk.txt', 'written by the sdk')
    assert.equal(await sandbox.files.read('/home/user/sdk.txt'), 'written by the sdk')
    assert.equal(readFileSync(f.host('home/user/sdk.txt'), 'utf8'), 'written by the sdk')
    assert.equal(await sandbox.isRunning(), true)
    await f.kill()
    assert.equal(await sandbox.isRunning(), false)
  })

  it('measures the proxy overhead on unary Process.List (printed, not asserted)', async (t) => {
    const directAgent = new Agent({ keepAlive: true })
    t.after(() => directAgent.destroy())
    const direct = createClient(
      Process,
      createConnectTransport({
        baseUrl: 'http://envd',
        httpVersion: '1.1',
        nodeOptions: { agent: directAgent, socketPath: a.socketPath },
        interceptors: [withHeaders({ 'x-access-token': a.accessToken })],
      }),
    )
    const proxied = viaProxy(Process, a)
    // Alternating calls, so both paths see the same machine load.
    const directMsList: number[] = []
    const proxiedMsList: number[] = []
    for (let i = 0; i < 250; i += 1) {
      for (const [client, list] of [
        [direct, directMsList],
        [proxied, proxiedMsList],
      ] as const) {
        const started = performance.now()
        await client.list({})
        list.push(performance.now() - started)
      }
    }
    // The first 50 of each warm up the JIT and the connection pools.
    const directMs = median(directMsList.slice(50))
    const proxiedMs = median(proxiedMsList.slice(50))
    t.diagnostic(
      `Process.List p50: direct ${directMs.toFixed(3)} ms, through the proxy ` +
        `${proxiedMs.toFixed(3)} ms, overhead ${(proxiedMs - directMs).toFixed(3)} ms`,
    )
  })
})

// ---- helpers ----

interface TestAgent {
  sandboxId: string
  socketPath: string
  accessToken: string
  target: ProxyTarget
  host(sandboxPath: string): string
  logs(): string
  /** SIGKILL, as a crashed sandbox. */
  kill(): Promise<void>
  /** Stops the agent, proves none of its processes survived, removes its files. */
  dispose(): Promise<void>
}

/** Starts the agent bundle on a Unix socket over a temp root, with a token, and /inits it. */
async function startAgent(): Promise<TestAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-envd-proxy-test-'))
  chmodSync(dir, 0o755)
  const root = join(dir, 'root')
  mkdirSync(join(root, 'etc'), { recursive: true })
  writeFileSync(
    join(root, 'etc/passwd'),
    `root:x:0:0:root:/root:/bin/bash\nuser:x:${userId}:${userId}::/home/user:/bin/bash\n`,
  )
  writeFileSync(join(root, 'etc/group'), `root:x:0:\nuser:x:${userId}:\n`)
  mkdirSync(join(root, 'root'), { mode: 0o700 })
  mkdirSync(join(root, 'home/user'), { recursive: true })
  chownSync(join(root, 'home/user'), userId, userId)
  mkdirSync(join(root, 'tmp'))
  chmodSync(join(root, 'tmp'), 0o1777)
  const socketPath = join(dir, 'agent.sock')
  const accessToken = randomBytes(32).toString('base64url')
  const tokenFile = join(dir, 'token')
  writeFileSync(tokenFile, `${accessToken}\n`, { mode: 0o600 })
  const env = { ...process.env }
  delete env.NODE_EXTRA_CA_CERTS
  const args = [agentBundle, '--listen', `unix:${socketPath}`, '--root', root]
  args.push('--ready-fd', '3', '--access-token-file', tokenFile)
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env,
  })
  let log = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    log += chunk.toString('utf8')
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no ready line within 10 s')), 10_000)
      let text = ''
      ;(child.stdio[3] as Readable).on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8')
        if (text.includes('\n')) {
          clearTimeout(timer)
          if (text.startsWith('ready ')) {
            resolve()
          } else {
            reject(new Error(`unexpected ready line ${text}`))
          }
        }
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`agent exited with ${String(code)} before ready`))
      })
    })
  } catch (err) {
    child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`agent did not start: ${(err as Error).message}\n${log}`, { cause: err })
  }
  const sandboxId = newSandboxId()
  const marker = randomUUID()
  // What the host does after start; the marker env var lets dispose find leftover processes.
  const init = await sendHttp(
    // No keep-alive: a pooled connection would linger on the agent socket.
    { socketPath, method: 'POST', path: '/init', agent: false },
    {
      headers: { 'content-type': 'application/json', 'x-access-token': accessToken },
      body: JSON.stringify({ envVars: { SANDCELL_ENVD_PROXY_TEST: marker } }),
    },
  )
  assert.equal(init.status, 204, init.text())
  let killed = false
  return {
    sandboxId,
    socketPath,
    accessToken,
    target: {
      sandboxId,
      socketPath,
      envdAccessToken: accessToken,
      state: 'running',
      autoResume: false,
    },
    host: (sandboxPath) => join(root, sandboxPath),
    logs: () => log,
    async kill() {
      killed = true
      child.kill('SIGKILL')
      await exited
    },
    async dispose() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
        await exited
        clearTimeout(timer)
      }
      const survivors = await waitFor(
        'the agent processes to end',
        () => {
          const found = markedProcesses(marker)
          return found.length === 0 ? found : undefined
        },
        5000,
      ).catch(() => markedProcesses(marker))
      rmSync(dir, { recursive: true, force: true })
      assert.deepEqual(survivors, [], `processes outlived the agent\n${log.slice(-3000)}`)
      assert.ok(killed || child.exitCode === 0, `agent exited with ${child.exitCode}\n${log}`)
    },
  }
}

function markedProcesses(marker: string): string[] {
  const needle = `SANDCELL_ENVD_PROXY_TEST=${marker}`
  return readdirSync('/proc').filter((entry) => {
    if (!/^\d+$/.test(entry)) {
      return false
    }
    try {
      return readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0').includes(needle)
    } catch {
      return false
    }
  })
}

/** Connected (accepted) sockets of the Unix socket at `path`, from the kernel's table. */
function connectionsTo(path: string): number {
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .filter((line) => {
      const fields = line.trim().split(/\s+/)
      // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
      return fields[7] === path && fields[5] === '03'
    }).length
}

interface TestServer {
  url: string
  port: number
  close(): Promise<void>
}

/** The server as the real one uses the proxy: route first, else the API (here a 404 marker). */
async function startProxyServer(proxy: EnvdProxy): Promise<TestServer> {
  // No request timeout: uploads and streams may run for hours.
  const server = createServer({ requestTimeout: 0 }, (req, res) => {
    const route = proxy.route(req)
    if (route !== undefined) {
      proxy.handle(req, res, route)
      return
    }
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ api: true }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

function withHeaders(headers: Record<string, string>): Interceptor {
  return (next) => (request) => {
    for (const [name, value] of Object.entries(headers)) {
      request.header.set(name, value)
    }
    return next(request)
  }
}

interface HttpResult {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  text(): string
  json<T = unknown>(): T
}

function sendHttp(
  options: RequestOptions,
  { headers, body }: { headers?: Record<string, string>; body?: string | Buffer | Readable },
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { ...options, ...(headers === undefined ? {} : { headers }) },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('error', reject)
        res.on('end', () => {
          const data = Buffer.concat(chunks)
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: data,
            text: () => data.toString('utf8'),
            json: <T>() => JSON.parse(data.toString('utf8')) as T,
          })
        })
      },
    )
    req.on('error', reject)
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) {
      req.end(body)
    } else {
      body.pipe(req)
    }
  })
}

interface ProcessOutput {
  stdout: string
  stderr: string
  exitCode: number | undefined
}

/** Reads a Process.Start stream to its end. */
async function collectProcess(events: AsyncIterable<StartResponse>): Promise<ProcessOutput> {
  const output: ProcessOutput = { stdout: '', stderr: '', exitCode: undefined }
  for await (const { event } of events) {
    const inner = event?.event
    if (inner?.case === 'data') {
      const text = Buffer.from(inner.value.output.value ?? new Uint8Array()).toString('utf8')
      if (inner.value.output.case === 'stdout') {
        output.stdout += text
      } else if (inner.value.output.case === 'stderr') {
        output.stderr += text
      }
    } else if (inner?.case === 'end') {
      output.exitCode = inner.value.exitCode
    }
  }
  return output
}

/** Resolves when `check()` returns a value, or fails after `timeoutMs`. */
async function waitFor<T>(what: string, check: () => T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined) {
      return value
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function iterate<T>(stream: AsyncIterable<T>): AsyncIterator<T> {
  return stream[Symbol.asyncIterator]()
}

async function nextValue<T>(events: AsyncIterator<T>): Promise<T | undefined> {
  const next = await events.next()
  return next.done === true ? undefined : next.value
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y)
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN
}
