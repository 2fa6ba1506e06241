/**
 * The client's plain HTTP routes (`/files`, `/init`) against a fake agent: a real HTTP server on
 * a Unix socket (the host side) or on loopback (through the server), recording every request and
 * answering with the status a test chooses.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import {
  DriverError,
  FileNotFoundError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  PermissionDeniedError,
  SandcellError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
} from '@sandcell/shared'
import { createAgentConnection, createProxiedEnvdClient } from './envd-client.js'

interface Recorded {
  method: string
  url: URL
  headers: IncomingHttpHeaders
  body: string
}

interface Answer {
  status: number
  body?: string
  /** Never answer (for deadlines). */
  hang?: boolean
}

/** A fake agent: records requests and answers each with `answer(request)`. */
function fakeAgent(
  listen: (server: Server, ready: () => void) => void,
  answer: (request: Recorded) => Answer,
): Promise<{ server: Server; requests: Recorded[] }> {
  const requests: Recorded[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const recorded: Recorded = {
        method: req.method ?? '',
        url: new URL(req.url ?? '/', 'http://agent'),
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      }
      requests.push(recorded)
      const { status, body, hang } = answer(recorded)
      if (hang === true) {
        return
      }
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' })
      res.end(body)
    })
  })
  return new Promise((resolve) => listen(server, () => resolve({ server, requests })))
}

function close(server: Server): Promise<void> {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(() => resolve()))
}

const envdError = (status: number, message: string): Answer => ({
  status,
  body: JSON.stringify({ code: status, message }),
})
const written = (path: string): Answer => ({
  status: 200,
  body: JSON.stringify([{ name: path.split('/').pop(), path, type: 'file' }]),
})

async function text(stream: AsyncIterable<Uint8Array>): Promise<string> {
  let out = ''
  for await (const chunk of stream) {
    out += Buffer.from(chunk).toString('utf8')
  }
  return out
}

describe('an agent reached over its socket', () => {
  let dir = ''
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-envd-client-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  /** A connection to a fake agent on a fresh socket, closed with the test. */
  async function agentWith(
    t: { after(fn: () => Promise<void> | void): void },
    answer: (request: Recorded) => Answer,
  ) {
    const socket = join(dir, `${Math.random().toString(36).slice(2)}.sock`)
    const fake = await fakeAgent((server, ready) => server.listen(socket, ready), answer)
    const connection = createAgentConnection(socket)
    t.after(async () => {
      connection.close()
      await close(fake.server)
    })
    return { connection, requests: fake.requests, socket }
  }

  it('uploads a file as a user and downloads it as a stream', async (t) => {
    let stored = ''
    const { connection, requests } = await agentWith(t, (req) => {
      if (req.method === 'POST') {
        stored = req.body
        return written(req.url.searchParams.get('path') ?? '')
      }
      return { status: 200, body: stored }
    })
    const uploaded = await connection.uploadFile(
      '/home/user/a b.txt',
      Readable.from([Buffer.from('hello '), Buffer.from('file')]),
      { user: 'root' },
    )
    assert.deepEqual(uploaded, { name: 'a b.txt', path: '/home/user/a b.txt', type: 'file' })
    assert.equal(await text(await connection.downloadFile('/home/user/a b.txt')), 'hello file')
    const [upload, download] = requests
    assert.equal(upload?.url.pathname, '/files')
    assert.equal(upload?.url.search, '?path=%2Fhome%2Fuser%2Fa%20b.txt&username=root')
    assert.equal(upload?.headers.authorization, `Basic ${Buffer.from('root:').toString('base64')}`)
    assert.equal(upload?.headers['content-type'], 'application/octet-stream')
    assert.equal(download?.url.searchParams.get('username'), 'user', 'the default user')
  })

  it('maps each refusal of /files to the error a caller can catch', async (t) => {
    const answers: Record<string, Answer> = {
      '/full': envdError(507, 'not enough disk space: write /full'),
      '/missing': envdError(404, 'no such file'),
      '/denied': envdError(403, 'permission denied'),
      '/dir': envdError(400, 'path is a directory'),
      '/token': envdError(401, 'invalid access token'),
      '/broken': envdError(500, 'boom'),
    }
    const { connection, socket } = await agentWith(
      t,
      (req) => answers[req.url.searchParams.get('path') ?? ''] ?? written('/x'),
    )
    const full = await connection.uploadFile('/full', 'x').catch((err: unknown) => err)
    assert.ok(full instanceof NotEnoughSpaceError)
    assert.equal(full.message, 'not enough disk space: write /full')
    const missing = await connection.downloadFile('/missing').catch((err: unknown) => err)
    assert.ok(missing instanceof FileNotFoundError)
    assert.equal(missing.message, '/missing does not exist')
    await assert.rejects(connection.uploadFile('/denied', 'x'), PermissionDeniedError)
    await assert.rejects(connection.downloadFile('/dir'), InvalidArgumentError)
    await assert.rejects(connection.downloadFile('/token'), UnauthenticatedError)
    await assert.rejects(connection.uploadFile('/broken', 'x'), (err: unknown) => {
      assert.ok(err instanceof DriverError)
      assert.equal(
        err.message,
        `POST unix:${socket}/files?path=%2Fbroken&username=user failed with HTTP 500: boom`,
      )
      return true
    })
    await assert.rejects(connection.uploadFile('', 'x'), InvalidArgumentError)
  })

  it('uploads an archive to a directory as a user, with a mode', async (t) => {
    const { connection, requests } = await agentWith(t, () => ({
      status: 200,
      body: JSON.stringify({ entries: 3, bytes: 42 }),
    }))
    const result = await connection.uploadArchive(
      '/app',
      Readable.from([Buffer.from('tar '), Buffer.from('bytes')]),
      { user: 'root', mode: 0o755 },
    )
    assert.deepEqual(result, { entries: 3, bytes: 42 })
    await connection.uploadArchive('src', new Uint8Array([1]))
    const [withMode, plain] = requests
    assert.equal(withMode?.method, 'POST')
    assert.equal(withMode?.url.pathname, '/archive')
    assert.equal(withMode?.url.search, '?path=%2Fapp&username=root&mode=0755')
    assert.equal(withMode?.headers['content-type'], 'application/x-tar')
    assert.equal(withMode?.body, 'tar bytes')
    assert.equal(plain?.url.search, '?path=src&username=user', 'the default user, no mode')
  })

  it('maps refusals of /archive and checks its arguments and answer', async (t) => {
    const answers: Record<string, Answer> = {
      '/bad': envdError(400, 'archive entry "../x" has a .. component'),
      '/full': envdError(507, 'not enough disk space: extract to /full/x'),
      '/odd': { status: 200, body: JSON.stringify({ entries: -1 }) },
    }
    const { connection, requests } = await agentWith(
      t,
      (req) => answers[req.url.searchParams.get('path') ?? ''] ?? envdError(500, 'unexpected'),
    )
    await assert.rejects(connection.uploadArchive('/bad', 'x'), {
      name: 'InvalidArgumentError',
      message: 'archive entry "../x" has a .. component',
    })
    await assert.rejects(connection.uploadArchive('/full', 'x'), NotEnoughSpaceError)
    await assert.rejects(connection.uploadArchive('/odd', 'x'), {
      name: 'BugError',
      message: /unexpected body: entries: .*; bytes: /,
    })
    const sent = requests.length
    await assert.rejects(connection.uploadArchive('', 'x'), InvalidArgumentError)
    for (const mode of [0o10000, -1, 1.5]) {
      await assert.rejects(connection.uploadArchive('/x', 'x', { mode }), InvalidArgumentError)
    }
    assert.equal(requests.length, sent, 'nothing sent for bad arguments')
  })

  it("fails with a DriverError naming the socket when the agent is not there, or the caller's reason", async () => {
    const connection = createAgentConnection(join(dir, 'nobody.sock'))
    try {
      await assert.rejects(connection.uploadFile('/x', 'x'), (err: unknown) => {
        assert.ok(err instanceof DriverError)
        assert.match(err.message, /^cannot reach the sandbox's agent at .*nobody\.sock \(/)
        return true
      })
      const abort = new AbortController()
      abort.abort(new Error('caller gave up'))
      await assert.rejects(
        connection.downloadFile('/x', { signal: abort.signal }),
        /caller gave up/,
      )
    } finally {
      connection.close()
    }
  })

  it('hands the agent its env vars and token with /init', async (t) => {
    const { connection, requests } = await agentWith(t, () => ({ status: 204 }))
    await connection.init({
      envVars: { A: '1' },
      accessToken: 'new-token',
      currentAccessToken: 'old-token',
    })
    const [init] = requests
    assert.equal(init?.method, 'POST')
    assert.equal(init?.url.pathname, '/init')
    assert.equal(init?.headers['x-access-token'], 'old-token')
    assert.equal(init?.headers['content-type'], 'application/json')
    assert.deepEqual(JSON.parse(init?.body ?? ''), {
      envVars: { A: '1' },
      accessToken: 'new-token',
      defaultUser: 'user',
    })
  })

  it('makes any refusal of /init a DriverError and a silent agent a TimeoutError', async (t) => {
    const refusing = await agentWith(t, () => envdError(400, 'bad body'))
    await assert.rejects(refusing.connection.init({ envVars: {}, accessToken: 't' }), {
      name: 'DriverError',
      message: 'the agent refused /init (400): bad body',
    })
    const silent = await agentWith(t, () => ({ status: 204, hang: true }))
    await assert.rejects(
      silent.connection.init({ envVars: {}, accessToken: 't' }, { timeoutMs: 100 }),
      (err: unknown) => err instanceof TimeoutError && /within 100 ms$/.test(err.message),
    )
  })

  it('tells a healthy agent from a refusing, silent or missing one', async (t) => {
    const up = await agentWith(t, () => ({ status: 204 }))
    assert.equal(await up.connection.healthy(), true)
    assert.equal(up.requests[0]?.method, 'GET')
    assert.equal(up.requests[0]?.url.pathname, '/health')
    const refusing = await agentWith(t, () => envdError(503, 'starting'))
    assert.equal(await refusing.connection.healthy(), false)
    const silent = await agentWith(t, () => ({ status: 204, hang: true }))
    assert.equal(await silent.connection.healthy({ timeoutMs: 100 }), false)
    const missing = createAgentConnection(join(dir, 'nobody.sock'))
    t.after(() => missing.close())
    assert.equal(await missing.healthy(), false)
  })
})

describe('an agent reached through the server', () => {
  /** A proxied client of sandbox `sb1` whose server is a fake on loopback. */
  async function serverWith(
    t: { after(fn: () => Promise<void> | void): void },
    answer: (request: Recorded) => Answer,
  ) {
    const fake = await fakeAgent((server, ready) => server.listen(0, '127.0.0.1', ready), answer)
    const { port } = fake.server.address() as AddressInfo
    const serverUrl = `http://127.0.0.1:${port}/prefix`
    const client = createProxiedEnvdClient(serverUrl, {
      sandboxId: 'sb1',
      envdAccessToken: 'token-1',
    })
    t.after(async () => {
      client.close()
      await close(fake.server)
    })
    return { client, requests: fake.requests, serverUrl }
  }

  it('sends the routing headers and the token with every transfer, below the path prefix', async (t) => {
    const { client, requests } = await serverWith(t, (req) => {
      if (req.url.pathname.endsWith('/archive')) {
        return { status: 200, body: JSON.stringify({ entries: 1, bytes: 3 }) }
      }
      return req.method === 'POST' ? written('/tmp/a') : { status: 200, body: 'data' }
    })
    await client.uploadFile('/tmp/a', new Uint8Array([1, 2]))
    assert.equal(await text(await client.downloadFile('/tmp/a', { user: 'root' })), 'data')
    assert.deepEqual(await client.uploadArchive('/tmp', 'tar'), { entries: 1, bytes: 3 })
    for (const request of requests) {
      assert.equal(request.headers['e2b-sandbox-id'], 'sb1')
      assert.equal(request.headers['e2b-sandbox-port'], '49983')
      assert.equal(request.headers['x-access-token'], 'token-1')
    }
    assert.equal(requests[1]?.url.searchParams.get('username'), 'root')
    assert.deepEqual(
      requests.map((request) => request.url.pathname),
      ['/prefix/files', '/prefix/files', '/prefix/archive'],
    )
  })

  it("maps the server's answers as the SDK always has", async (t) => {
    const answers: Record<string, Answer> = {
      '/missing': envdError(404, 'no such file'),
      '/paused': envdError(502, 'paused'),
      '/token': envdError(401, 'invalid signature'),
      '/broken': envdError(500, 'boom'),
    }
    const { client, serverUrl } = await serverWith(
      t,
      (req) => answers[req.url.searchParams.get('path') ?? ''] ?? written('/x'),
    )
    await assert.rejects(client.downloadFile('/missing'), FileNotFoundError)
    await assert.rejects(client.downloadFile('/paused'), {
      name: 'UnavailableError',
      message: 'sandbox sb1 is not running: paused',
    })
    await assert.rejects(client.downloadFile('/token'), {
      name: 'UnauthenticatedError',
      message: `unauthorized (401) by ${serverUrl}: invalid signature`,
    })
    await assert.rejects(
      client.uploadFile('/broken', 'x'),
      (err: unknown) => err instanceof SandcellError && err.constructor === SandcellError,
    )
  })

  it('says which server it could not reach', async () => {
    const client = createProxiedEnvdClient('http://127.0.0.1:9', { sandboxId: 'sb1' })
    try {
      await assert.rejects(client.downloadFile('/x'), (err: unknown) => {
        assert.ok(err instanceof UnavailableError)
        assert.match(err.message, /^cannot reach the sandcell server at http:\/\/127\.0\.0\.1:9 \(/)
        return true
      })
    } finally {
      client.close()
    }
  })

  it('needs a sandbox id', () => {
    assert.throws(
      () => createProxiedEnvdClient('http://x', { sandboxId: '' }),
      InvalidArgumentError,
    )
  })
})
