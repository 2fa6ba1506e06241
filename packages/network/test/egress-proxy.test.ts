// The egress proxy between real sockets on 127.0.0.1, with real node:http and node:tls upstreams:
// HTTPS relayed by SNI with the handshake end to end, HTTP by Host, and what a sandbox may try
// against it (names not allowed, look-alikes, rebinding, garbage, floods, silence).
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import {
  Agent,
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import { connect, createServer as createNetServer, type Server as NetServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Duplex } from 'node:stream'
import { after, before, describe, it, type TestContext } from 'node:test'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { createLogger, createSilentLogger } from '@sandcell/shared'
import { assertNoLeaks, snapshotLeaks, waitFor } from '@sandcell/test-utils'
import {
  startEgressProxy,
  type EgressClient,
  type EgressProxy,
  type EgressProxyOptions,
  type EgressProxyStats,
} from '../src/egress-proxy/egress-proxy.js'
import { egressPolicyFromE2b, isDomainAllowed } from '../src/policy/egress-policy.js'

const loopback = '127.0.0.1'
/** Stands for a private or metadata address a hostile name resolves to. */
const refusedAddress = '127.0.0.66'
/** How quickly a refusal must reach the sandbox: at once, not after a timeout. */
const fastMs = 500

const policy = egressPolicyFromE2b({
  allowOut: ['allowed.test', '*.allowed.test'],
  denyOut: ['0.0.0.0/0'],
})
/** The sandbox the tests play: E2B's exact and `*.` matching, as the manager wires it. */
const sandbox: EgressClient = {
  id: 'sb_egress',
  allowsDomain: (name) => isDomainAllowed(policy, name),
}

interface UpstreamRequest {
  host: string | undefined
  servername: string | undefined
  url: string | undefined
  remotePort: number | undefined
}

function portOf(server: NetServer): number {
  const address = server.address()
  assert.ok(address !== null && typeof address === 'object')
  return address.port
}

function listening<T extends NetServer>(server: T): Promise<T> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, loopback, () => resolve(server))
  })
}

function closing(server: NetServer): Promise<void> {
  return new Promise<void>((resolve) => server.close(() => resolve()))
}

/** A port nothing listens on (taken, then freed). */
async function freePort(): Promise<number> {
  const server = await listening(createNetServer())
  const port = portOf(server)
  await closing(server)
  return port
}

/** The first flight node:tls writes for `servername`, captured in memory, never sent. */
function captureClientHello(servername: string | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        resolve(Buffer.from(chunk))
        callback()
        setImmediate(() => tls.destroy())
      },
    })
    const tls = tlsConnect({
      socket: transport,
      ...(servername === undefined ? {} : { servername }),
    })
    tls.on('error', reject)
  })
}

/** How a raw connection to the proxy ended, and how long after the first write. */
interface Ending {
  how: 'reset' | 'closed' | 'error'
  afterMs: number
  received: Buffer
  code?: string | undefined
}

/** Connects, writes `bytes` (if any), and waits for the connection to end however it does. */
function exchange(port: number, bytes?: Buffer | string): Promise<Ending> {
  return new Promise((resolve) => {
    const socket = connect({ host: loopback, port })
    const chunks: Buffer[] = []
    let started = performance.now()
    socket.on('connect', () => {
      started = performance.now()
      if (bytes !== undefined) {
        socket.write(bytes)
      }
    })
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('end', () => socket.end())
    let code: string | undefined
    socket.on('error', (err: NodeJS.ErrnoException) => {
      code = err.code
    })
    socket.on('close', () => {
      resolve({
        how: code === 'ECONNRESET' ? 'reset' : code === undefined ? 'closed' : 'error',
        afterMs: performance.now() - started,
        received: Buffer.concat(chunks),
        code,
      })
    })
  })
}

async function assertResetFast(port: number, bytes: Buffer | string, what: string): Promise<void> {
  const ending = await exchange(port, bytes)
  assert.equal(ending.how, 'reset', `${what}: ${JSON.stringify(ending)}`)
  assert.ok(ending.afterMs < fastMs, `${what}: reset after ${ending.afterMs} ms`)
  assert.equal(ending.received.length, 0, what)
}

/** The proxy's counters once every connection has closed on its side too (a tick after ours). */
async function settledStats(proxy: EgressProxy): Promise<EgressProxyStats> {
  await waitFor('the proxy to close its connections', () => proxy.stats().open === 0)
  return proxy.stats()
}

function httpHead(host: string, extra = ''): string {
  return `GET /probe HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`
}

function readBody(res: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    res.on('data', (chunk: Buffer) => chunks.push(chunk))
    res.on('end', () => resolve(Buffer.concat(chunks)))
    res.on('error', reject)
  })
}

describe('egress proxy', { timeout: 60_000 }, () => {
  const baseline = snapshotLeaks()
  let dir: string
  let cert: Buffer
  let httpUpstream: HttpServer
  let tlsUpstream: HttpsServer
  const requests: UpstreamRequest[] = []

  function record(req: IncomingMessage): void {
    requests.push({
      host: req.headers.host,
      servername: (req.socket as TLSSocket).servername || undefined,
      url: req.url,
      remotePort: req.socket.remotePort,
    })
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-egress-proxy-'))
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1'],
        ...['-subj', '/CN=allowed.test'],
        ...['-addext', 'subjectAltName=DNS:allowed.test,DNS:*.allowed.test'],
        ...['-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      ],
      { stdio: 'ignore' },
    )
    cert = readFileSync(join(dir, 'cert.pem'))
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      record(req)
      if (req.method === 'POST') {
        // Echo: the body goes back as it came, for the backpressure test.
        res.writeHead(200, { 'content-type': 'application/octet-stream' })
        req.pipe(res)
        return
      }
      req.resume()
      res.end(`hello ${req.headers.host ?? '?'} ${req.url ?? '?'}`)
    }
    httpUpstream = await listening(createHttpServer({ keepAliveTimeout: 30_000 }, handler))
    tlsUpstream = await listening(
      createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert }, handler),
    )
  })

  after(async () => {
    httpUpstream.closeAllConnections()
    tlsUpstream.closeAllConnections()
    await Promise.all([closing(httpUpstream), closing(tlsUpstream)])
    rmSync(dir, { recursive: true, force: true })
    await assertNoLeaks(baseline)
  })

  /** Names the tests' resolver knows; anything else does not resolve. */
  const zone: Record<string, string[]> = {
    'allowed.test': [loopback],
    'a.b.allowed.test': [loopback],
    'evilallowed.test': [loopback],
    'allowed.test.evil': [loopback],
    'rebind.allowed.test': [refusedAddress],
    'mixed.allowed.test': [refusedAddress, 'not-an-address', loopback],
    'empty.allowed.test': [],
  }

  interface Harness {
    proxy: EgressProxy
    resolved: string[]
    asked: string[]
  }

  async function startProxy(
    t: TestContext,
    overrides: Partial<EgressProxyOptions> = {},
  ): Promise<Harness> {
    const resolved: string[] = []
    const asked: string[] = []
    const proxy = await startEgressProxy({
      log: createSilentLogger(),
      host: loopback,
      upstreamHttpPort: portOf(httpUpstream),
      upstreamTlsPort: portOf(tlsUpstream),
      lookupClient: (address) => {
        asked.push(address)
        return sandbox
      },
      resolve: (name) => {
        resolved.push(name)
        const answers = zone[name]
        return answers === undefined
          ? Promise.reject(new Error(`ENOTFOUND ${name}`))
          : Promise.resolve(answers)
      },
      // 127.0.0.1 stands for the public internet here; the rest of loopback stays refused.
      isRefused: (address) => address !== loopback,
      ...overrides,
    })
    t.after(() => proxy.close())
    return { proxy, resolved, asked }
  }

  function httpGet(
    port: number,
    host: string,
    agent: Agent | false = false,
  ): Promise<{ res: IncomingMessage; body: string; reused: boolean }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        { host: loopback, port, path: '/probe', headers: { host }, agent },
        (res) => {
          readBody(res).then(
            (body) => resolve({ res, body: body.toString(), reused: req.reusedSocket }),
            reject,
          )
        },
      )
      req.on('error', reject)
      req.end()
    })
  }

  it('relays an HTTPS request whose SNI is allowed, dialling the name, and the TLS handshake completes end to end', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    const before = requests.length
    const socket = tlsConnect({
      host: loopback,
      port: proxy.tlsPort,
      servername: 'allowed.test',
      ca: cert,
    })
    t.after(() => socket.destroy())
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve)
      socket.once('error', reject)
    })
    assert.equal(socket.authorized, true, String(socket.authorizationError))
    assert.equal(socket.getPeerCertificate().subject.CN, 'allowed.test')
    socket.end('GET /secure HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n')
    const response = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => resolve(Buffer.concat(chunks).toString()))
      socket.on('error', reject)
    })
    assert.match(response, /^HTTP\/1\.1 200 OK\r\n/)
    assert.match(response, /hello allowed\.test \/secure$/)
    assert.deepEqual(resolved, ['allowed.test'])
    assert.equal(requests.length, before + 1)
    assert.equal(requests.at(-1)?.servername, 'allowed.test')
    assert.deepEqual(await settledStats(proxy), { allowed: 1, denied: 0, failed: 0, open: 0 })
  })

  it('relays a plain HTTP request by its Host header, and a second request on the same keep-alive connection', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    t.after(() => agent.destroy())
    const before = requests.length
    const first = await httpGet(proxy.httpPort, 'allowed.test', agent)
    const second = await httpGet(proxy.httpPort, 'allowed.test', agent)
    assert.equal(first.body, 'hello allowed.test /probe')
    assert.equal(second.body, 'hello allowed.test /probe')
    assert.equal(first.reused, false)
    assert.equal(second.reused, true)
    const seen = requests.slice(before)
    assert.equal(seen.length, 2)
    assert.equal(seen[0]?.remotePort, seen[1]?.remotePort, 'one upstream connection for both')
    assert.deepEqual(resolved, ['allowed.test'])
    assert.equal(proxy.stats().allowed, 1)
  })

  it('passes a half-close on both ways', async (t) => {
    // A raw upstream that answers only once the sandbox has finished sending.
    const upstream = await listening(
      createNetServer({ allowHalfOpen: true }, (socket) => {
        const chunks: Buffer[] = []
        socket.on('data', (chunk: Buffer) => chunks.push(chunk))
        socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).length} bytes`))
        socket.on('error', () => {})
      }),
    )
    t.after(() => closing(upstream))
    const { proxy } = await startProxy(t, { upstreamHttpPort: portOf(upstream) })
    const head = httpHead('allowed.test')
    const socket = connect({ host: loopback, port: proxy.httpPort, allowHalfOpen: true })
    t.after(() => socket.destroy())
    socket.write(head)
    socket.write('and some more')
    socket.end()
    const reply = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => resolve(Buffer.concat(chunks).toString()))
      socket.on('error', reject)
    })
    assert.equal(reply, `got ${head.length + 'and some more'.length} bytes`)
  })

  it('relays a large body both ways intact, with backpressure', async (t) => {
    const { proxy } = await startProxy(t)
    const body = randomBytes(8 * 1024 * 1024)
    const echoed = await new Promise<Buffer>((resolve, reject) => {
      const req = httpRequest(
        {
          host: loopback,
          port: proxy.httpPort,
          method: 'POST',
          path: '/echo',
          headers: { host: 'allowed.test', 'content-length': body.length },
          agent: false,
        },
        (res) => {
          // Read slowly at first, so the upstream has to wait on the sandbox.
          res.pause()
          setTimeout(() => {
            readBody(res).then(resolve, reject)
            res.resume()
          }, 200)
        },
      )
      req.on('error', reject)
      req.end(body)
    })
    const digest = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex')
    assert.equal(echoed.length, body.length)
    assert.equal(digest(echoed), digest(body))
  })

  it('rejects an SNI that is not allowed with a reset, fast', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    await assertResetFast(proxy.tlsPort, await captureClientHello('evil.test'), 'evil.test')
    assert.deepEqual(resolved, [], 'a refused name is never resolved')
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 1, failed: 0, open: 0 })
  })

  it('rejects look-alike names: allowsDomain decides allowed.test, a.b.allowed.test, evilallowed.test and allowed.test.evil', async (t) => {
    const names: string[] = []
    const { proxy } = await startProxy(t, {
      lookupClient: () => ({
        id: sandbox.id,
        allowsDomain: (name) => {
          names.push(name)
          return sandbox.allowsDomain(name)
        },
      }),
    })
    for (const name of ['allowed.test', 'a.b.allowed.test', 'ALLOWED.Test.']) {
      const { body } = await httpGet(proxy.httpPort, name)
      assert.equal(body, `hello ${name} /probe`, name)
    }
    for (const name of ['evilallowed.test', 'allowed.test.evil']) {
      await assertResetFast(proxy.httpPort, httpHead(name), name)
      await assertResetFast(proxy.tlsPort, await captureClientHello(name), `${name} by SNI`)
    }
    assert.deepEqual(names, [
      'allowed.test',
      'a.b.allowed.test',
      'allowed.test',
      'evilallowed.test',
      'evilallowed.test',
      'allowed.test.evil',
      'allowed.test.evil',
    ])
  })

  it('cannot be used to reach a refused address: a name resolving to one is reset (DNS rebinding)', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    await assertResetFast(proxy.httpPort, httpHead('rebind.allowed.test'), 'by Host')
    await assertResetFast(proxy.tlsPort, await captureClientHello('rebind.allowed.test'), 'by SNI')
    assert.deepEqual(resolved, ['rebind.allowed.test', 'rebind.allowed.test'])
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 2, failed: 0, open: 0 })
  })

  it('cannot reach a refused address through the default isRefused either', async (t) => {
    // Without the test's override, loopback itself is refused: allowed.test resolves to it.
    const { proxy } = await startProxy(t, { isRefused: undefined })
    await assertResetFast(proxy.httpPort, httpHead('allowed.test'), 'loopback')
    assert.equal(proxy.stats().denied, 1)
  })

  it('drops refused and malformed answers and dials the remaining address', async (t) => {
    const { proxy } = await startProxy(t)
    const { body } = await httpGet(proxy.httpPort, 'mixed.allowed.test')
    assert.equal(body, 'hello mixed.allowed.test /probe')
  })

  it('dials the name, not the destination the sandbox chose', async (t) => {
    // The sandbox's connection arrives at the proxy's own port: the only way to the upstream is
    // the name in its first bytes, resolved by the proxy's resolver.
    const answersGiven: string[] = []
    const { proxy } = await startProxy(t, {
      resolve: (name) => {
        answersGiven.push(name)
        return Promise.resolve(name === 'allowed.test' ? [loopback] : [])
      },
    })
    const before = requests.length
    const { body } = await httpGet(proxy.httpPort, 'allowed.test')
    assert.equal(body, 'hello allowed.test /probe')
    assert.deepEqual(answersGiven, ['allowed.test'])
    assert.equal(requests.length, before + 1)
    assert.notEqual(portOf(httpUpstream), proxy.httpPort)
    // The same connection with a name the resolver does not know goes nowhere.
    await assertResetFast(proxy.httpPort, httpHead('b.allowed.test'), 'unknown to the resolver')
  })

  it('rejects a ClientHello without SNI', async (t) => {
    const { proxy } = await startProxy(t)
    await assertResetFast(proxy.tlsPort, await captureClientHello(undefined), 'no SNI')
    assert.equal(proxy.stats().denied, 1)
  })

  it('rejects garbage bytes on either port', async (t) => {
    const { proxy } = await startProxy(t)
    await assertResetFast(proxy.tlsPort, 'GET / HTTP/1.1\r\n', 'HTTP on the TLS port')
    await assertResetFast(proxy.tlsPort, randomBytes(64), 'random bytes on the TLS port')
    await assertResetFast(
      proxy.httpPort,
      await captureClientHello('allowed.test'),
      'TLS on the HTTP port',
    )
    await assertResetFast(proxy.httpPort, '\0\0\0\0', 'zeros on the HTTP port')
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 4, failed: 0, open: 0 })
  })

  it('rejects an IP literal as SNI or Host', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    // Same length as allowed.test, swapped into a real ClientHello in place.
    const hello = await captureClientHello('allowed.test')
    const at = hello.indexOf('allowed.test')
    assert.ok(at > 0)
    hello.write('10.200.30.40', at, 'latin1')
    await assertResetFast(proxy.tlsPort, hello, 'IPv4 SNI')
    await assertResetFast(proxy.httpPort, httpHead(loopback), 'IPv4 Host')
    await assertResetFast(proxy.httpPort, httpHead(`${loopback}:80`), 'IPv4 Host with port')
    await assertResetFast(proxy.httpPort, httpHead('2130706433'), 'decimal IPv4 Host')
    await assertResetFast(proxy.httpPort, httpHead('[::1]:80'), 'IPv6 Host')
    assert.deepEqual(resolved, [])
  })

  it('rejects a Host header given twice', async (t) => {
    const { proxy, resolved } = await startProxy(t)
    await assertResetFast(
      proxy.httpPort,
      httpHead('allowed.test', 'Host: evil.test\r\n'),
      'two Host headers',
    )
    assert.deepEqual(resolved, [])
  })

  it('resets connections from an address that is no sandbox', async (t) => {
    const { proxy, asked } = await startProxy(t, {
      lookupClient: (address) => {
        asked.push(address)
        return undefined
      },
    })
    await assertResetFast(proxy.httpPort, httpHead('allowed.test'), 'http')
    await assertResetFast(proxy.tlsPort, await captureClientHello('allowed.test'), 'tls')
    assert.deepEqual(asked, [loopback, loopback])
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 2, failed: 0, open: 0 })
  })

  it('enforces maxConnectionsPerClient, and frees a slot when a connection closes', async (t) => {
    const { proxy } = await startProxy(t, { maxConnectionsPerClient: 2 })
    const idle = [0, 1].map(() => connect({ host: loopback, port: proxy.httpPort }))
    for (const socket of idle) {
      socket.on('error', () => {})
      t.after(() => socket.destroy())
    }
    await waitFor('two connections held', () => proxy.stats().open === 2)
    await assertResetFast(proxy.httpPort, httpHead('allowed.test'), 'third on the HTTP port')
    await assertResetFast(proxy.tlsPort, await captureClientHello('allowed.test'), 'third on TLS')
    idle[0]?.destroy()
    await waitFor('a slot freed', () => proxy.stats().open === 1)
    const { body } = await httpGet(proxy.httpPort, 'allowed.test')
    assert.equal(body, 'hello allowed.test /probe')
    idle[1]?.destroy()
    await waitFor('every slot freed', () => proxy.stats().open === 0)
    // Freed exactly once each: the full allowance is back.
    const again = [0, 1].map(() => connect({ host: loopback, port: proxy.httpPort }))
    for (const socket of again) {
      socket.on('error', () => {})
      t.after(() => socket.destroy())
    }
    await waitFor('two connections held again', () => proxy.stats().open === 2)
    await assertResetFast(proxy.httpPort, httpHead('allowed.test'), 'third again')
  })

  it('resets a client that sends nothing, or not enough, after peekTimeoutMs', async (t) => {
    const peekTimeoutMs = 150
    const { proxy } = await startProxy(t, { peekTimeoutMs })
    const silent = await exchange(proxy.tlsPort)
    assert.equal(silent.how, 'reset')
    assert.ok(silent.afterMs >= peekTimeoutMs - 20 && silent.afterMs < peekTimeoutMs + fastMs)
    const hello = await captureClientHello('allowed.test')
    const partial = await exchange(proxy.tlsPort, hello.subarray(0, 40))
    assert.equal(partial.how, 'reset')
    const head = await exchange(proxy.httpPort, 'GET / HTTP/1.1\r\nHost: allowed.test\r\n')
    assert.equal(head.how, 'reset')
    assert.ok(head.afterMs >= peekTimeoutMs - 20)
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 3, failed: 0, open: 0 })
  })

  it('resets when the name does not resolve or no address accepts, counted as failed', async (t) => {
    const { proxy } = await startProxy(t)
    await assertResetFast(proxy.httpPort, httpHead('nowhere.allowed.test'), 'resolution error')
    await assertResetFast(proxy.httpPort, httpHead('empty.allowed.test'), 'no address')
    const closed = await startProxy(t, { upstreamHttpPort: await freePort() })
    await assertResetFast(closed.proxy.httpPort, httpHead('allowed.test'), 'connection refused')
    assert.deepEqual(await settledStats(proxy), { allowed: 0, denied: 0, failed: 2, open: 0 })
    assert.deepEqual(await settledStats(closed.proxy), {
      allowed: 0,
      denied: 0,
      failed: 1,
      open: 0,
    })
  })

  it('gives up on a resolver that never answers within connectTimeoutMs', async (t) => {
    const { proxy } = await startProxy(t, {
      connectTimeoutMs: 150,
      resolve: (_name, options) =>
        new Promise((_resolve, reject) => {
          options?.signal?.addEventListener('abort', () => reject(new Error('aborted')))
        }),
    })
    const ending = await exchange(proxy.httpPort, httpHead('allowed.test'))
    assert.equal(ending.how, 'reset')
    assert.ok(ending.afterMs >= 130 && ending.afterMs < 150 + fastMs, `${ending.afterMs} ms`)
    assert.equal(proxy.stats().failed, 1)
  })

  it('closes a relayed connection idle for idleTimeoutMs', async (t) => {
    const { proxy } = await startProxy(t, { idleTimeoutMs: 200 })
    const socket = connect({ host: loopback, port: proxy.httpPort })
    t.after(() => socket.destroy())
    socket.on('error', () => {})
    socket.write('GET /probe HTTP/1.1\r\nHost: allowed.test\r\n\r\n')
    const started = performance.now()
    await new Promise<void>((resolve) => socket.once('data', () => resolve()))
    await new Promise<void>((resolve) => socket.once('close', () => resolve()))
    const afterMs = performance.now() - started
    assert.ok(afterMs >= 150 && afterMs < 200 + fastMs, `closed after ${afterMs} ms`)
    await waitFor('the proxy to let go', () => proxy.stats().open === 0)
  })

  it('logs each decision at debug with the sandbox and the name, never the payload', async (t) => {
    const lines: string[] = []
    const log = createLogger({ level: 'debug', destination: { write: (line) => lines.push(line) } })
    const { proxy } = await startProxy(t, { log })
    await httpGet(proxy.httpPort, 'allowed.test')
    await exchange(proxy.httpPort, httpHead('evil.test', 'X-Secret: s3cr3t-payload\r\n'))
    const decisions = lines
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.msg === 'egress decision')
    assert.deepEqual(
      decisions.map(({ sandboxId, name, decision, component }) => ({
        sandboxId,
        name,
        decision,
        component,
      })),
      [
        {
          sandboxId: sandbox.id,
          name: 'allowed.test',
          decision: 'allowed',
          component: 'network.egress-proxy',
        },
        {
          sandboxId: sandbox.id,
          name: 'evil.test',
          decision: 'denied',
          component: 'network.egress-proxy',
        },
      ],
    )
    assert.ok(decisions.every((entry) => entry.level === 20))
    assert.ok(!lines.join('').includes('s3cr3t'), 'no payload in the logs')
  })

  it('close() leaves nothing listening and ends relayed connections', async (t) => {
    const { proxy } = await startProxy(t)
    const agent = new Agent({ keepAlive: true })
    t.after(() => agent.destroy())
    await httpGet(proxy.httpPort, 'allowed.test', agent)
    const [held] = Object.values(agent.freeSockets).flat()
    assert.ok(held !== undefined, 'a kept-alive connection through the proxy')
    const heldClosed = new Promise<void>((resolve) => held.once('close', () => resolve()))
    const silent = connect({ host: loopback, port: proxy.tlsPort })
    silent.on('error', () => {})
    const silentClosed = new Promise<void>((resolve) => silent.once('close', () => resolve()))
    await waitFor('both connections open', () => proxy.stats().open === 2)
    await proxy.close()
    await Promise.all([heldClosed, silentClosed])
    assert.equal(proxy.stats().open, 0)
    for (const port of [proxy.httpPort, proxy.tlsPort]) {
      const ending = await exchange(port, 'x')
      assert.equal(ending.code, 'ECONNREFUSED', `port ${port}`)
    }
    await proxy.close()
    await waitFor('the upstream connection to close', async () => {
      const count = await new Promise<number>((resolve, reject) =>
        httpUpstream.getConnections((err, n) => (err === null ? resolve(n) : reject(err))),
      )
      return count === 0
    })
  })
})
