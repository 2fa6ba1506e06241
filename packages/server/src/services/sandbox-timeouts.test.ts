import assert from 'node:assert/strict'
import { afterEach, beforeEach, describe, it, mock } from 'node:test'
import { Gauge, Registry } from 'prom-client'
import { createSilentLogger } from '@sandcell/shared'
import { SqliteStore, type SandboxRecord } from '../store/sqlite-store.js'
import { fakeSandbox, sandboxRecord } from './fake-sandboxes.js'
import { KeyedMutex } from './keyed-mutex.js'
import { LiveSandboxes } from './live-sandboxes.js'
import { SandboxTimeouts } from './sandbox-timeouts.js'

const maxTimerMs = 2 ** 31 - 1

function record(endAt: number, onTimeout: SandboxRecord['onTimeout']): SandboxRecord {
  return sandboxRecord({ startedAt: 0, endAt, onTimeout })
}

/** Moves the clock on, then lets the expiry's promise chain (the lock, the action) finish. */
async function advance(ms: number): Promise<void> {
  mock.timers.tick(ms)
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
    live.insert(r, fakeSandbox(r.id))
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
    await advance(9_999)
    assert.deepEqual(done, [])
    await advance(1)
    assert.deepEqual(done, [`kill ${killed.id}`])
    await advance(10_000)
    assert.deepEqual(done, [`kill ${killed.id}`, `pause ${paused.id}`])
  })

  it('waits on in steps when a lifetime is longer than one timer can wait', async () => {
    const long = record(maxTimerMs + 5_000, 'kill')
    track(long)
    await advance(maxTimerMs)
    assert.deepEqual(done, [])
    await advance(5_000)
    assert.deepEqual(done, [`kill ${long.id}`])
  })

  it('ends a sandbox whose end time passed while the server was down at once', async () => {
    mock.timers.tick(50_000)
    const overdue = record(10_000, 'kill')
    track(overdue)
    await advance(0)
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
    await advance(10_000)
    assert.deepEqual(done, [])
    await advance(20_000)
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
