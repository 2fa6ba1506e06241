import assert from 'node:assert/strict'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { describe, it } from 'node:test'
import { decide } from './proxy-decision.js'
import type { ProxyRegistry, ProxyTarget } from './proxy-target.js'

const running: ProxyTarget = {
  sandboxId: 'running0000000000000',
  socketPath: '/run/running.sock',
  envdAccessToken: 'token',
  state: 'running',
  autoResume: false,
  portAddress: '10.200.0.2',
}
/** Paused keeping its files only: no agent, no address until it boots again. */
const asleepOnDisk: ProxyTarget = {
  sandboxId: 'asleep00000000000000',
  socketPath: '',
  envdAccessToken: 'token',
  state: 'paused',
  autoResume: true,
}
const pausedForGood: ProxyTarget = {
  ...asleepOnDisk,
  sandboxId: 'pausedforgood0000000',
  autoResume: false,
}
const loopbackOnly: ProxyTarget = {
  ...running,
  sandboxId: 'loopback000000000000',
  portAddress: undefined,
}
const targets = [running, asleepOnDisk, pausedForGood, loopbackOnly]
const registry: ProxyRegistry = {
  get: (id) => targets.find((target) => target.sandboxId === id),
  list: () => targets,
  resume: () => Promise.resolve(),
}

function request(
  url = '/process.Process/List',
  headers: IncomingHttpHeaders = {},
): IncomingMessage {
  return { headers, url, method: 'POST' } as IncomingMessage
}

function to(target: ProxyTarget, port: number) {
  return { kind: 'sandbox' as const, sandboxId: target.sandboxId, port, via: 'header' as const }
}

describe('proxy decision', () => {
  it("forwards to a running sandbox's agent and ports", () => {
    assert.deepEqual(decide(request(), to(running, 49983), registry), {
      kind: 'forward',
      target: running,
      upstream: { kind: 'agent', socketPath: '/run/running.sock' },
    })
    assert.deepEqual(decide(request('/'), to(running, 8080), registry), {
      kind: 'forward',
      target: running,
      upstream: { kind: 'port', host: '10.200.0.2', port: 8080, tls: false },
    })
  })

  it('holds a request for a paused sandbox with autoResume, on envd and on any port', () => {
    for (const port of [49983, 8080]) {
      assert.deepEqual(decide(request('/'), to(asleepOnDisk, port), registry), {
        kind: 'resume',
        target: asleepOnDisk,
      })
    }
  })

  it('refuses a paused sandbox without autoResume, and server-only paths even to wake one', () => {
    const paused = decide(request(), to(pausedForGood, 49983), registry)
    assert.equal(paused.kind === 'refuse' && paused.status, 502)
    const init = decide(request('/init'), to(asleepOnDisk, 49983), registry)
    assert.equal(init.kind === 'refuse' && init.status, 403)
  })

  it('refuses a port of a running sandbox without a network, and an unknown sandbox', () => {
    const port = decide(request('/'), to(loopbackOnly, 8080), registry)
    assert.equal(
      port.kind === 'refuse' && port.body.message,
      'The sandbox is running but port is not open',
    )
    const unknown = decide(
      request(),
      { kind: 'sandbox', sandboxId: 'nosuch', port: 49983, via: 'header' },
      registry,
    )
    assert.equal(unknown.kind === 'refuse' && unknown.status, 502)
  })
})
