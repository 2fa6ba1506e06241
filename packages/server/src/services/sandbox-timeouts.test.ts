import assert from 'node:assert/strict'
import { afterEach, beforeEach, describe, it, mock } from 'node:test'
import { Gauge, Registry } from 'prom-client'
import type { Sandbox } from '@sandcell/runtime'
import { createSilentLogger, newSandboxId } from '@sandcell/shared'
import { SqliteStore, type SandboxRecord } from '../store/sqlite-store.js'
import { KeyedMutex } from './keyed-mutex.js'
import { LiveSandboxes } from './live-sandboxes.js'
import { SandboxTimeouts } from './sandbox-timeouts.js'

const maxTimerMs = 2 ** 31 - 1

function record(endAt: number, onTimeout: SandboxRecord['onTimeout']): SandboxRecord {
  return {
    id: newSandboxId(),
    templateId: 'base',
    driver: 'container',
    state: 'running',
    clientId: 'sandcell',
    metadata: {},
    envVars: {},
    envdAccessToken: 'envd-token',
    limits: { memoryMiB: 512, cpus: 1, pids: 256, diskMiB: 1024 },
    startedAt: 0,
    endAt,
    onTimeout,
    autoResume: false,
    allowInternetAccess: null,
    network: null,
    trafficAccessToken: null,
  }
}

/** Lets the expiry's promise chain (the mutex, the action) run to its end. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i += 1) {
    await Promise.resolve()
  }
}

describe('sandbox timeouts', () => {
  let store: SqliteStore
  let live: LiveSandboxes
  let timeouts: SandboxTimeouts
  const done: string[] = []

  const track = (r: SandboxRecord): void => {
    live.insert(r, { id: r.id, info: { agentSocket: '/run/a.sock' } } as unknown as Sandbox)
    timeouts.schedule(r.id, r.endAt)
  }

  beforeEach(() => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 })
    done.length = 0
    store = new SqliteStore(':memory:')
    const gauge = new Gauge({
      name: 'g',
      help: 'h',
      labelNames: ['state'],
      registers: [new Registry()],
    })
    live = new LiveSandboxes({ store, gauge, log: createSilentLogger() })
    timeouts = new SandboxTimeouts({
      live,
      mutex: new KeyedMutex(),
      log: createSilentLogger(),
      defaultTimeoutS: 300,
      maxTimeoutS: 3600,
      actions: {
        pause: (r) => {
          done.push(`pause ${r.id}`)
          live.update(r.id, { state: 'paused' })
          return Promise.resolve()
        },
        kill: (id) => {
          done.push(`kill ${id}`)
          live.remove(id, 'killed')
          return Promise.resolve()
        },
      },
    })
  })

  afterEach(() => {
    timeouts.close()
    store.close()
    mock.timers.reset()
  })

  it('kills or pauses a sandbox (its onTimeout) when its end time comes, not before', async () => {
    const killed = record(10_000, 'kill')
    const paused = record(20_000, 'pause')
    track(killed)
    track(paused)
    mock.timers.tick(9_999)
    await settle()
    assert.deepEqual(done, [])
    mock.timers.tick(1)
    await settle()
    assert.deepEqual(done, [`kill ${killed.id}`])
    mock.timers.tick(10_000)
    await settle()
    assert.deepEqual(done, [`kill ${killed.id}`, `pause ${paused.id}`])
  })

  it('waits on in steps when a lifetime is longer than one timer can wait', async () => {
    const long = record(maxTimerMs + 5_000, 'kill')
    track(long)
    mock.timers.tick(maxTimerMs)
    await settle()
    assert.deepEqual(done, [])
    mock.timers.tick(5_000)
    await settle()
    assert.deepEqual(done, [`kill ${long.id}`])
  })

  it('ends a sandbox whose end time passed while the server was down at once', async () => {
    mock.timers.tick(50_000)
    const overdue = record(10_000, 'kill')
    track(overdue)
    mock.timers.tick(0)
    await settle()
    assert.deepEqual(done, [`kill ${overdue.id}`])
  })

  it('does nothing to a sandbox whose timer was cancelled or replaced', async () => {
    const cancelled = record(10_000, 'kill')
    const extended = record(10_000, 'kill')
    track(cancelled)
    track(extended)
    timeouts.cancel(cancelled.id)
    live.update(extended.id, { endAt: 30_000 })
    timeouts.schedule(extended.id, 30_000)
    mock.timers.tick(10_000)
    await settle()
    assert.deepEqual(done, [])
    mock.timers.tick(20_000)
    await settle()
    assert.deepEqual(done, [`kill ${extended.id}`])
  })

  it('takes whole seconds from 1 to the maximum as a lifetime, the default when none', () => {
    assert.equal(timeouts.lifetimeMs(undefined), 300_000)
    assert.equal(timeouts.lifetimeMs(3600), 3_600_000)
    for (const bad of [0, 1.5, 3601]) {
      assert.throws(() => timeouts.lifetimeMs(bad), { code: 'INVALID_ARGUMENT' })
    }
  })
})
