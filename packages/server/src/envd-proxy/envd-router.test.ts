import assert from 'node:assert/strict'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { describe, it } from 'node:test'
import { fileSignature } from '@sandcell/protocol'
import type { ProxyRegistry, ProxyTarget } from './proxy-target.js'
import { createEnvdRouter } from './envd-router.js'

const sandboxA: ProxyTarget = {
  sandboxId: 'aaaaaaaaaaaaaaaaaaaa',
  socketPath: '/run/a.sock',
  envdAccessToken: 'token-a',
  state: 'running',
  autoResume: false,
}
const sandboxB: ProxyTarget = {
  sandboxId: 'bbbbbbbbbbbbbbbbbbbb',
  socketPath: '/run/b.sock',
  envdAccessToken: 'token-b',
  state: 'running',
  autoResume: false,
}
const open: ProxyTarget = {
  sandboxId: 'cccccccccccccccccccc',
  socketPath: '/run/c.sock',
  envdAccessToken: '',
  state: 'running',
  autoResume: false,
}
const targets = [open, sandboxA, sandboxB]
const registry: ProxyRegistry = {
  get: (id) => targets.find((target) => target.sandboxId === id),
  list: () => targets,
  resume: () => Promise.resolve(),
}
const route = createEnvdRouter({ registry, domain: 'Sandcell.Local' })

function fakeRequest(
  headers: IncomingHttpHeaders,
  url = '/process.Process/List',
  method = 'POST',
): IncomingMessage {
  return { headers, url, method } as IncomingMessage
}

describe('envd router', () => {
  it('routes by the E2b-Sandbox-Id header, port 49983 by default', () => {
    assert.deepEqual(route(fakeRequest({ 'e2b-sandbox-id': sandboxA.sandboxId })), {
      kind: 'sandbox',
      sandboxId: sandboxA.sandboxId,
      port: 49983,
      via: 'header',
    })
    assert.deepEqual(
      route(fakeRequest({ 'e2b-sandbox-id': 'whatever', 'e2b-sandbox-port': '3000' })),
      { kind: 'sandbox', sandboxId: 'whatever', port: 3000, via: 'header' },
    )
  })

  it('routes by a PORT-SANDBOXID host under the domain or localhost', () => {
    for (const host of [
      `49983-${sandboxB.sandboxId}.sandcell.local`,
      `49983-${sandboxB.sandboxId}.SANDCELL.local:8080`,
      `49983-${sandboxB.sandboxId}.sandcell.local.`,
      `49983-${sandboxB.sandboxId}.localhost:3000`,
    ]) {
      assert.deepEqual(
        route(fakeRequest({ host })),
        { kind: 'sandbox', sandboxId: sandboxB.sandboxId, port: 49983, via: 'host' },
        host,
      )
    }
  })

  it('leaves API hosts and other domains to the API', () => {
    for (const host of [
      'api.sandcell.local',
      '127.0.0.1:3000',
      `49983-${sandboxA.sandboxId}.example.com`,
      `49983-${sandboxA.sandboxId}.evil-sandcell.local`,
      `x.49983-${sandboxA.sandboxId}.sandcell.local`,
      'sandcell.local',
      '[::1]:3000',
    ]) {
      assert.equal(route(fakeRequest({ host })), undefined, host)
    }
    assert.equal(route(fakeRequest({})), undefined)
  })

  it('prefers the header over the host', () => {
    const result = route(
      fakeRequest({
        'e2b-sandbox-id': sandboxB.sandboxId,
        host: `49983-${sandboxA.sandboxId}.sandcell.local`,
      }),
    )
    assert.equal(result?.kind === 'sandbox' && result.sandboxId, sandboxB.sandboxId)
  })

  it('rejects a repeated or malformed E2b-Sandbox-Id header', () => {
    for (const id of [
      `${sandboxA.sandboxId}, ${sandboxB.sandboxId}`,
      '',
      '../x',
      'a b',
      'x'.repeat(200),
    ]) {
      const result = route(fakeRequest({ 'e2b-sandbox-id': id }))
      assert.equal(result?.kind, 'refused', id)
      assert.equal(result.kind === 'refused' && result.status, 400)
    }
    const badPort = route(
      fakeRequest({ 'e2b-sandbox-id': sandboxA.sandboxId, 'e2b-sandbox-port': '1, 2' }),
    )
    assert.equal(badPort?.kind, 'refused')
  })

  it('finds the sandbox whose token signed a /files URL', () => {
    const path = '/home/user/f.txt'
    const read = fileSignature(path, 'read', 'user', sandboxB.envdAccessToken)
    const query = new URLSearchParams({ path, username: 'user', signature: read })
    assert.deepEqual(route(fakeRequest({}, `/files?${query.toString()}`, 'GET')), {
      kind: 'sandbox',
      sandboxId: sandboxB.sandboxId,
      port: 49983,
      via: 'signature',
    })
    const write = fileSignature(path, 'write', '', sandboxA.envdAccessToken, 1_900_000_000)
    const writeQuery = new URLSearchParams({
      path,
      signature: write,
      signature_expiration: '1900000000',
    })
    const result = route(fakeRequest({}, `/files?${writeQuery.toString()}`, 'POST'))
    assert.equal(result?.kind === 'sandbox' && result.sandboxId, sandboxA.sandboxId)
  })

  it('rejects a signature made for another operation, path or expiry', () => {
    const path = '/home/user/f.txt'
    const read = fileSignature(path, 'read', '', sandboxA.envdAccessToken)
    const attempts = [
      {
        url: `/files?${new URLSearchParams({ path, signature: read }).toString()}`,
        method: 'POST',
      },
      {
        url: `/files?${new URLSearchParams({ path: '/etc/x', signature: read }).toString()}`,
        method: 'GET',
      },
      {
        url: `/files?${new URLSearchParams({ path, signature: read, signature_expiration: '9' }).toString()}`,
        method: 'GET',
      },
      {
        url: `/files?${new URLSearchParams({ path, signature: 'v1_short' }).toString()}`,
        method: 'GET',
      },
    ]
    for (const { url, method } of attempts) {
      const result = route(fakeRequest({}, url, method))
      assert.equal(result?.kind === 'refused' && result.status, 401, url)
    }
  })

  it('leaves /files without a signature, and other paths with one, to the API', () => {
    assert.equal(route(fakeRequest({}, '/files?path=/x', 'GET')), undefined)
    assert.equal(route(fakeRequest({}, '/filesx?signature=v1_x', 'GET')), undefined)
    assert.equal(route(fakeRequest({}, '/sandboxes?signature=v1_x', 'GET')), undefined)
  })
})
