import assert from 'node:assert/strict'
import { describe, it, mock } from 'node:test'
import { Gauge, Registry } from 'prom-client'
import { BugError, createSilentLogger, newSandboxId } from '@sandcell/shared'
import { SqliteStore } from '../store/sqlite-store.js'
import { fakeSandbox, sandboxRecord as record } from './fake-sandboxes.js'
import { LiveSandboxes } from './live-sandboxes.js'

function setup() {
  const store = new SqliteStore(':memory:')
  const registry = new Registry()
  const gauge = new Gauge({
    name: 'sandboxes',
    help: 'h',
    labelNames: ['state'],
    registers: [registry],
  })
  const live = new LiveSandboxes({ store, gauge, log: createSilentLogger() })
  const counted = async (): Promise<Record<string, number>> =>
    Object.fromEntries((await gauge.get()).values.map((v) => [String(v.labels.state), v.value]))
  return { store, live, counted }
}

describe('live sandboxes', () => {
  it('sets the running and paused gauges on every change, from zero', async () => {
    const { store, live, counted } = setup()
    assert.deepEqual(await counted(), { running: 0, paused: 0 })
    const a = record()
    const b = record()
    live.insert(a, fakeSandbox(a.id))
    live.insert(b, fakeSandbox(b.id))
    live.update(b.id, { state: 'paused' })
    assert.deepEqual(await counted(), { running: 1, paused: 1 })
    assert.deepEqual(live.counts(), { running: 1, paused: 1 })
    live.remove(b.id, 'killed')
    assert.deepEqual(await counted(), { running: 1, paused: 0 })
    store.close()
  })

  it('writes every change to the store and keeps the same record in memory', () => {
    const { store, live } = setup()
    const a = record()
    live.insert(a, fakeSandbox(a.id))
    const updated = live.update(a.id, { state: 'paused', endAt: 99_000 })
    assert.deepEqual(store.getSandbox(a.id), updated)
    assert.deepEqual(live.require(a.id).record, updated)
    live.remove(a.id, 'killed')
    assert.equal(store.getSandbox(a.id), undefined)
    assert.equal(live.get(a.id), undefined)
    store.close()
  })

  it('derives the proxy target from the record and the runtime, and follows its state', () => {
    const { store, live } = setup()
    const a = record({
      autoResume: true,
      trafficAccessToken: 'traffic',
      network: { allowPublicTraffic: false, maskRequestHost: 'x:${PORT}', httpsPorts: [443] },
    })
    live.insert(a, fakeSandbox(a.id, '10.0.0.2'))
    assert.deepEqual(live.require(a.id).target, {
      sandboxId: a.id,
      socketPath: `/run/${a.id}.sock`,
      envdAccessToken: 'envd-token',
      state: 'running',
      autoResume: true,
      portAddress: '10.0.0.2',
      trafficAccessToken: 'traffic',
      maskRequestHost: 'x:${PORT}',
      httpsPorts: [443],
    })
    live.update(a.id, { state: 'paused' })
    assert.equal(live.require(a.id).target.state, 'paused')
    store.close()
  })

  it('drops the runtime handle for a filesystem-only pause and takes the resumed one, stored', () => {
    const { store, live } = setup()
    const a = record()
    live.insert(a, fakeSandbox(a.id, '10.0.0.2'))
    const paused = live.replaceSandbox(a.id, undefined, {
      state: 'paused',
      filesystemPause: {
        template: 'base',
        egress: { allowCidrs: [], denyCidrs: ['0.0.0.0/0'], allowDomains: ['example.com'] },
      },
    })
    assert.deepEqual(store.getSandbox(a.id), paused)
    const asleep = live.require(a.id)
    assert.equal(asleep.sandbox, undefined)
    assert.equal(asleep.target.state, 'paused')
    assert.equal(asleep.target.socketPath, '')
    assert.equal(asleep.target.portAddress, undefined)
    const resumed = live.replaceSandbox(a.id, fakeSandbox(a.id, '10.0.0.6'), {
      state: 'running',
      filesystemPause: null,
    })
    assert.deepEqual(store.getSandbox(a.id), resumed)
    assert.equal(live.require(a.id).target.portAddress, '10.0.0.6')
    assert.deepEqual(live.counts(), { running: 1, paused: 0 })
    store.close()
  })

  it('lists records oldest first, as the store does', () => {
    const { store, live } = setup()
    const late = record({ startedAt: 3000 })
    const early = record({ startedAt: 2000 })
    live.insert(late, fakeSandbox(late.id))
    live.insert(early, fakeSandbox(early.id))
    assert.deepEqual(
      live.records().map((r) => r.id),
      store.listSandboxes().map((r) => r.id),
    )
    assert.deepEqual(
      live.records().map((r) => r.id),
      [early.id, late.id],
    )
    store.close()
  })

  it('stops a removed sandbox timer, and a second remove changes nothing', async () => {
    mock.timers.enable({ apis: ['setTimeout'] })
    try {
      const { store, live, counted } = setup()
      const a = record()
      const entry = live.insert(a, fakeSandbox(a.id))
      let fired = false
      entry.timer = setTimeout(() => (fired = true), 10)
      assert.equal(live.remove(a.id, 'killed'), entry)
      assert.equal(live.remove(a.id, 'the sandbox ended'), undefined)
      mock.timers.tick(10)
      assert.equal(fired, false)
      assert.deepEqual(await counted(), { running: 0, paused: 0 })
      store.close()
    } finally {
      mock.timers.reset()
    }
  })

  it('refuses to change a sandbox it does not manage', () => {
    const { store, live } = setup()
    assert.throws(() => live.update(newSandboxId(), { state: 'paused' }), BugError)
    assert.throws(() => live.require('nosuchsandbox'), { code: 'SANDBOX_NOT_FOUND' })
    store.close()
  })
})
