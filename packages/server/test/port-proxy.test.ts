// The proxy's way to a sandbox's own ports (anything but envd's 49983), against real HTTP,
// HTTPS and WebSocket servers standing in for a sandbox's services on loopback: routing by
// header and host, streaming, Host masking, traffic tokens, upgrades, and E2B's error bodies.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type Server,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { WebSocket, WebSocketServer } from 'ws'
import { createSilentLogger, newSandboxId } from '@sandcell/shared'
import { createEnvdProxy } from '../src/envd-proxy/envd-proxy.js'
import type { ProxyRegistry, ProxyTarget } from '../src/envd-proxy/proxy-target.js'

const domain = 'sandcell.local'

interface Reply {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port))
  })
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

describe('proxy to sandbox ports', { timeout: 60_000 }, () => {
  const targets = new Map<string, ProxyTarget>()
  const registry: ProxyRegistry = {
    get: (id) => targets.get(id),
    list: () => targets.values(),
    resume: () => Promise.resolve(),
  }
  const proxy = createEnvdProxy({ registry, log: createSilentLogger(), domain })
  const seen: IncomingHttpHeaders[] = []
  /** The sandbox's web service: echoes what it was sent, streams on /stream, big on /big. */
  const service = createServer((req, res) => {
    seen.push(req.headers)
    if (req.url === '/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('first\n')
      setTimeout(() => res.end('second\n'), 200)
      return
    }
    if (req.url === '/big') {
      const chunk = Buffer.alloc(1024 * 1024, 7)
      res.writeHead(200, { 'content-length': 16 * chunk.length })
      for (let i = 0; i < 16; i += 1) {
        res.write(chunk)
      }
      res.end()
      return
    }
    let body = ''
    req.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')))
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, body }))
    })
  })
  const sockets = new WebSocketServer({ server: service })
  sockets.on('connection', (socket) =>
    socket.on('message', (data) => socket.send(`echo:${(data as Buffer).toString()}`)),
  )
  let tlsDir: string
  let tlsService: Server
  let servicePort: number
  let tlsPort: number
  let front: Server
  let frontPort: number
  const open: ProxyTarget = {
    sandboxId: newSandboxId(),
    socketPath: '/nonexistent/agent.sock',
    envdAccessToken: 'envd',
    state: 'running',
    autoResume: false,
    portAddress: '127.0.0.1',
  }
  const secured: ProxyTarget = {
    ...open,
    sandboxId: newSandboxId(),
    trafficAccessToken: 'traffic-token-of-secured',
  }
  const other: ProxyTarget = {
    ...open,
    sandboxId: newSandboxId(),
    trafficAccessToken: 'traffic-token-of-other',
  }
  const offline: ProxyTarget = { ...open, sandboxId: newSandboxId() }
  delete offline.portAddress

  const send = (path: string, headers: Record<string, string>, body?: string): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: frontPort,
          path,
          method: body === undefined ? 'GET' : 'POST',
          headers,
          agent: false,
        },
        (res) => {
          let text = ''
          res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')))
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }),
          )
        },
      )
      req.on('error', reject)
      req.end(body)
    })

  before(async () => {
    servicePort = await listen(service)
    tlsDir = mkdtempSync(join(tmpdir(), 'port-proxy-tls-'))
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-subj',
        '/CN=sandbox',
        '-keyout',
        join(tlsDir, 'key.pem'),
        '-out',
        join(tlsDir, 'cert.pem'),
        '-days',
        '1',
      ],
      { stdio: 'ignore' },
    )
    tlsService = createHttpsServer(
      { key: readFileSync(join(tlsDir, 'key.pem')), cert: readFileSync(join(tlsDir, 'cert.pem')) },
      (req, res) => res.end(`tls:${req.url}`),
    )
    tlsPort = await listen(tlsService)
    for (const target of [open, secured, other, offline]) {
      targets.set(target.sandboxId, target)
    }
    targets.set(open.sandboxId, { ...open, httpsPorts: [tlsPort] })
    front = createServer((req, res) => {
      const route = proxy.route(req)
      if (route === undefined) {
        res.writeHead(404).end('api')
        return
      }
      proxy.handle(req, res, route)
    })
    front.on('upgrade', (req, socket, head: Buffer) => {
      const route = proxy.route(req)
      if (route === undefined) {
        socket.destroy()
        return
      }
      proxy.handleUpgrade(req, socket, head, route)
    })
    frontPort = await listen(front)
  })

  after(async () => {
    await close(front)
    sockets.close()
    await close(service)
    await close(tlsService)
    await proxy.close()
    rmSync(tlsDir, { recursive: true, force: true })
  })

  it('forwards a request to any port by header and by host, body and Host kept', async () => {
    const byHeader = await send(
      '/echo?x=1',
      {
        'e2b-sandbox-id': open.sandboxId,
        'e2b-sandbox-port': String(servicePort),
      },
      'payload',
    )
    assert.equal(byHeader.status, 200)
    const echoed = JSON.parse(byHeader.body) as {
      method: string
      url: string
      body: string
      host: string
    }
    assert.deepEqual([echoed.method, echoed.url, echoed.body], ['POST', '/echo?x=1', 'payload'])
    const host = `${servicePort}-${open.sandboxId}.${domain}`
    const byHost = await send('/', { host })
    assert.equal(byHost.status, 200)
    assert.equal((JSON.parse(byHost.body) as { host: string }).host, host)
  })

  it('streams a response as the sandbox writes it and relays 16 MiB intact', async () => {
    const started = performance.now()
    const firstByte = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: frontPort,
          path: '/stream',
          headers: { 'e2b-sandbox-id': open.sandboxId, 'e2b-sandbox-port': String(servicePort) },
          agent: false,
        },
        (res) => {
          res.once('data', () => resolve(performance.now() - started))
          res.resume()
        },
      )
      req.on('error', reject)
      req.end()
    })
    assert.ok(firstByte < 150, `first chunk after ${firstByte} ms, before the second was written`)
    const big = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: frontPort,
          path: '/big',
          headers: { 'e2b-sandbox-id': open.sandboxId, 'e2b-sandbox-port': String(servicePort) },
          agent: false,
        },
        (res) => {
          let bytes = 0
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length
          })
          res.on('end', () => resolve(bytes))
        },
      )
      req.on('error', reject)
      req.end()
    })
    assert.equal(big, 16 * 1024 * 1024)
  })

  it("answers 502 with E2B's body when nothing listens, and for an unknown sandbox", async () => {
    const closed = await send('/', { 'e2b-sandbox-id': open.sandboxId, 'e2b-sandbox-port': '1' })
    assert.equal(closed.status, 502)
    assert.deepEqual(JSON.parse(closed.body), {
      sandboxId: open.sandboxId,
      message: 'The sandbox is running but port is not open',
      port: 1,
      code: 502,
    })
    const ghost = newSandboxId()
    const unknown = await send('/', { host: `8000-${ghost}.${domain}` })
    assert.equal(unknown.status, 502)
    assert.deepEqual(JSON.parse(unknown.body), {
      sandboxId: ghost,
      message: 'The sandbox was not found',
      code: 502,
    })
    const noNetwork = await send('/', {
      'e2b-sandbox-id': offline.sandboxId,
      'e2b-sandbox-port': String(servicePort),
    })
    assert.equal(noNetwork.status, 502)
  })

  it('shows a browser an HTML page with the same status', async () => {
    const res = await send('/', {
      'e2b-sandbox-id': newSandboxId(),
      'e2b-sandbox-port': '8000',
      'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0',
    })
    assert.equal(res.status, 502)
    assert.match(String(res.headers['content-type']), /^text\/html/)
    assert.match(res.body, /The sandbox was not found/)
  })

  it("rejects a secured port without its traffic token, or with another sandbox's", async () => {
    const port = String(servicePort)
    const missing = await send('/', {
      'e2b-sandbox-id': secured.sandboxId,
      'e2b-sandbox-port': port,
    })
    assert.equal(missing.status, 403)
    assert.deepEqual(JSON.parse(missing.body), {
      sandboxId: secured.sandboxId,
      message:
        "Sandbox is secured with traffic access token. Token header 'e2b-traffic-access-token' is missing",
      code: 403,
    })
    for (const token of [
      'wrong',
      other.trafficAccessToken ?? '',
      `${secured.trafficAccessToken}x`,
    ]) {
      const res = await send('/', {
        'e2b-sandbox-id': secured.sandboxId,
        'e2b-sandbox-port': port,
        'e2b-traffic-access-token': token,
      })
      assert.equal(res.status, 403, token)
      assert.match(res.body, /Provided token in header 'e2b-traffic-access-token' is invalid/)
    }
    const before = seen.length
    const allowed = await send('/', {
      'e2b-sandbox-id': secured.sandboxId,
      'e2b-sandbox-port': port,
      'e2b-traffic-access-token': secured.trafficAccessToken ?? '',
    })
    assert.equal(allowed.status, 200)
    assert.equal(seen.length, before + 1)
    assert.equal(
      seen.at(-1)?.['e2b-traffic-access-token'],
      undefined,
      'the token stays with the proxy',
    )
  })

  it("never asks for the traffic token on envd's port", async () => {
    const res = await send('/health', { 'e2b-sandbox-id': secured.sandboxId })
    // The agent socket of this stand-in does not exist: the proxy tried it instead of a 403.
    assert.equal(res.status, 502)
    assert.match(res.body, /agent socket is gone/)
  })

  it('sends the masked Host with the original in X-Forwarded-Host', async () => {
    const masked = newSandboxId()
    targets.set(masked, {
      ...open,
      sandboxId: masked,
      maskRequestHost: 'custom-host.example.com:${PORT}',
    })
    try {
      const host = `${servicePort}-${masked}.${domain}`
      const res = await send('/', { host })
      assert.equal(res.status, 200)
      assert.equal(seen.at(-1)?.host, `custom-host.example.com:${servicePort}`)
      assert.equal(seen.at(-1)?.['x-forwarded-host'], host)
    } finally {
      targets.delete(masked)
    }
  })

  it('speaks TLS to a port the sandbox declared in httpsPorts', async () => {
    const res = await send('/secure', {
      'e2b-sandbox-id': open.sandboxId,
      'e2b-sandbox-port': String(tlsPort),
    })
    assert.equal(res.status, 200)
    assert.equal(res.body, 'tls:/secure')
  })

  it('relays a WebSocket both ways, and refuses one without the traffic token', async () => {
    const url = `ws://127.0.0.1:${frontPort}/socket`
    const socket = new WebSocket(url, {
      headers: { 'e2b-sandbox-id': open.sandboxId, 'e2b-sandbox-port': String(servicePort) },
    })
    await new Promise((resolve, reject) => {
      socket.once('open', resolve)
      socket.once('error', reject)
    })
    const replies: string[] = []
    const got = new Promise<void>((resolve) => {
      socket.on('message', (data) => {
        replies.push((data as Buffer).toString())
        if (replies.length === 2) {
          resolve()
        }
      })
    })
    socket.send('one')
    socket.send('two')
    await got
    assert.deepEqual(replies, ['echo:one', 'echo:two'])
    socket.close()
    const refused = new WebSocket(url, {
      headers: { 'e2b-sandbox-id': secured.sandboxId, 'e2b-sandbox-port': String(servicePort) },
    })
    const status = await new Promise<number>((resolve) => {
      refused.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
      refused.once('error', () => resolve(-1))
    })
    assert.equal(status, 403)
  })
})
