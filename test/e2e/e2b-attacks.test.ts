/**
 * Attacks on a real `sandcell serve` through the official e2b SDK and raw HTTP: another
 * sandbox's access token, other sandbox ports, signed URLs across sandboxes, the API without
 * a key, secrets in the public endpoints, and the server seen from inside a sandbox.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AuthenticationError, CommandExitError, Sandbox } from 'e2b'
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
let a: Sandbox
let b: Sandbox

const secret = 'only for sandbox A'

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
  ;[a, b] = await Promise.all([
    Sandbox.create(server.connection),
    Sandbox.create(server.connection),
  ])
  await a.files.write('/home/user/secret.txt', secret)
})

after(async () => {
  try {
    await Promise.all([a?.kill(), b?.kill()])
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** The access token the server gave a sandbox (the SDK keeps it in a protected field). */
function accessTokenOf(sandbox: Sandbox): string {
  const token = (sandbox as unknown as { envdAccessToken?: string }).envdAccessToken
  assert.ok(token !== undefined && token.length > 0, 'sandboxes get an access token')
  return token
}

/** Sandbox A as the SDK sees it when handed A's id with some other token (or none). */
function impostor(envdAccessToken: string | undefined): Sandbox {
  return new Sandbox({
    ...server.connection,
    sandboxId: a.sandboxId,
    envdVersion: '0.5.7',
    ...(envdAccessToken === undefined ? {} : { envdAccessToken }),
  })
}

interface RawResponse {
  status: number
  body: string
}

/** A plain HTTP/1.1 request to the server with exactly these headers (Host included). */
function rawRequest(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<RawResponse> {
  const { hostname, port } = new URL(server.url)
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port, method, path, headers }, (res) => {
      let text = ''
      res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('envd access between sandboxes', { timeout: 60_000 }, () => {
  it("cannot run commands or touch files in sandbox A with sandbox B's access token", async () => {
    const withB = impostor(accessTokenOf(b))
    await assert.rejects(withB.commands.run('id'), AuthenticationError)
    await assert.rejects(withB.commands.run('id', { background: true }), AuthenticationError)
    await assert.rejects(withB.commands.list(), AuthenticationError)
    await assert.rejects(withB.files.read('/home/user/secret.txt'), AuthenticationError)
    await assert.rejects(withB.files.write('/home/user/planted.txt', 'x'), AuthenticationError)
    await assert.rejects(withB.files.list('/home/user'), AuthenticationError)
    await assert.rejects(
      withB.pty.create({ cols: 80, rows: 24, onData: () => undefined }),
      AuthenticationError,
    )
    assert.equal(await a.files.exists('/home/user/planted.txt'), false)
    assert.equal(await a.files.read('/home/user/secret.txt'), secret)
  })

  it('cannot run commands or read files in a sandbox without its access token', async () => {
    const anonymous = impostor(undefined)
    await assert.rejects(anonymous.commands.run('id'), AuthenticationError)
    await assert.rejects(anonymous.files.read('/home/user/secret.txt'), AuthenticationError)
    const forged = impostor('0'.repeat(accessTokenOf(a).length))
    await assert.rejects(forged.commands.run('id'), AuthenticationError)
  })

  it("cannot read sandbox A's file with a download URL signed by sandbox B", async () => {
    const url = await b.downloadUrl('/home/user/secret.txt')
    const response = await fetch(url)
    // B's signature takes the request to B, which has no such file: never A's bytes.
    assert.equal(response.status, 404)
    assert.doesNotMatch(await response.text(), new RegExp(secret))

    const forged = new URL(await a.downloadUrl('/home/user/secret.txt'))
    forged.searchParams.set('signature', `v1_${'A'.repeat(43)}`)
    const refused = await fetch(forged)
    assert.equal(refused.status, 401)
    assert.doesNotMatch(await refused.text(), new RegExp(secret))
  })

  it("cannot reach sandbox A's port by naming B in the header and A in the Host", async () => {
    // Something really listens on 8080 inside A (on loopback: the proxy reaches it anyway).
    await a.commands.run('python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1', {
      background: true,
      timeoutMs: 0,
    })
    await waitFor('a server on port 8080 inside the sandbox', async () => {
      const probe = await a.commands
        .run(
          'python3 -c "import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:8080/\')"',
        )
        .catch(() => undefined)
      return probe?.exitCode === 0
    })
    const byHeader = await rawRequest('GET', '/', {
      'E2b-Sandbox-Id': a.sandboxId,
      'E2b-Sandbox-Port': '8080',
    })
    assert.equal(byHeader.status, 200)
    assert.match(byHeader.body, /Directory listing/)
    const host = a.getHost(8080)
    assert.equal(host, `8080-${a.sandboxId}.sandcell.local`)
    assert.equal((await rawRequest('GET', '/', { Host: host })).status, 200)
    // The header wins over the Host, consistently: B is asked, and B listens on nothing.
    const confused = await rawRequest('GET', '/', {
      Host: host,
      'E2b-Sandbox-Id': b.sandboxId,
      'E2b-Sandbox-Port': '8080',
    })
    assert.equal(confused.status, 502)
    assert.doesNotMatch(confused.body, /Directory listing/)
    assert.match(confused.body, /port is not open/)
    // The same routes reach envd itself on its own port.
    const envd = await rawRequest('GET', '/health', { Host: a.getHost(49983) })
    assert.equal(envd.status, 204)
  })

  it('cannot reach the server, and through it other sandboxes, from inside a sandbox', async () => {
    const { port } = new URL(server.url)
    const error = await a.commands
      .run(
        `python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/health', timeout=3)"`,
      )
      .then(
        () => assert.fail('the server answered a sandbox'),
        (err: unknown) => err,
      )
    assert.ok(error instanceof CommandExitError, String(error))
    assert.match(error.stderr, /Connection refused|unreachable|timed out/)
  })
})

describe('the API without a key', { timeout: 60_000 }, () => {
  const routes = (id: string): [string, string, unknown][] => [
    ['POST', '/sandboxes', { templateID: 'base' }],
    ['POST', '/v2/sandboxes', { templateID: 'base' }],
    ['GET', '/sandboxes', undefined],
    ['GET', '/v2/sandboxes', undefined],
    ['GET', `/sandboxes/${id}`, undefined],
    ['DELETE', `/sandboxes/${id}`, undefined],
    ['POST', `/sandboxes/${id}/timeout`, { timeout: 1 }],
    ['POST', `/sandboxes/${id}/refreshes`, { duration: 1 }],
    ['POST', `/sandboxes/${id}/pause`, {}],
    ['POST', `/sandboxes/${id}/connect`, { timeout: 10 }],
    ['POST', `/v2/sandboxes/${id}/connect`, { timeout: 10 }],
    ['POST', `/sandboxes/${id}/resume`, { timeout: 10 }],
    ['GET', `/sandboxes/${id}/metrics`, undefined],
    ['PUT', `/sandboxes/${id}/network`, {}],
    ['POST', `/sandboxes/${id}/snapshots`, {}],
    ['POST', `/sandboxes/${id}/fork`, { count: 1 }],
    ['GET', '/snapshots', undefined],
    ['DELETE', '/snapshots/anything', undefined],
    ['GET', '/no/such/route', undefined],
  ]

  /** Ways to send no usable key; a function, because the server starts after this runs. */
  const credentials: [string, () => { headers: Record<string, string>; query: string }][] = [
    ['no key', () => ({ headers: {}, query: '' })],
    [
      'a wrong key',
      () => ({ headers: { 'X-API-KEY': 'sc_wrong_0123456789abcdefghijklm' }, query: '' }),
    ],
    ['an empty key', () => ({ headers: { 'X-API-KEY': '' }, query: '' })],
    [
      'the right key in the wrong header',
      () => ({ headers: { Authorization: `Bearer ${server.apiKey}` }, query: '' }),
    ],
    ['the right key in the query', () => ({ headers: {}, query: `?api_key=${server.apiKey}` })],
  ]

  for (const [label, credentialsFor] of credentials) {
    it(`rejects every API route with ${label}: 401, and nothing happens`, async () => {
      const { headers: sent, query } = credentialsFor()
      for (const [method, path, body] of routes(a.sandboxId)) {
        const response = await fetch(`${server.url}${path}${query}`, {
          method,
          headers: {
            ...sent,
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        })
        assert.equal(response.status, 401, `${method} ${path}`)
        const answer = (await response.json()) as { code: number; message: string }
        assert.equal(answer.code, 401, `${method} ${path}`)
      }
      const info = await a.getInfo()
      assert.equal(info.state, 'running', 'not paused, not killed')
      assert.ok(info.endAt.getTime() > Date.now() + 60_000, 'its timeout did not change')
      const listed = await Sandbox.list(server.connection).nextItems()
      assert.equal(listed.length, 2, 'no sandbox was created')
    })
  }

  it('cannot learn an API key or an access token from /health or /metrics', async () => {
    for (const path of ['/health', '/metrics']) {
      const response = await fetch(`${server.url}${path}`)
      assert.equal(response.status, 200, path)
      const text = await response.text()
      for (const hidden of [server.apiKey, accessTokenOf(a), accessTokenOf(b)]) {
        assert.ok(!text.includes(hidden), `${path} shows a secret`)
      }
    }
  })
})
