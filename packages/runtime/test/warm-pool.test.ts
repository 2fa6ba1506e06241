/** The warm pool on the real container driver: hand-over, refill, isolation, shutdown. */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { WarmPool, isIdlePooled, type Sandbox } from '@sandcell/runtime'
import { sh, waitFor } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createTestContainerDriver,
  snapshotLeaks,
  testLimits,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let made: TestDriver
const handedOut: Sandbox[] = []

before(() => {
  baseline = snapshotLeaks()
  made = createTestContainerDriver()
})

after(async () => {
  await Promise.allSettled(handedOut.map((s) => s.destroy()))
  await made.dispose()
  await assertNoLeaks(baseline)
})

describe('warm pool', () => {
  it('fills to its size, hands over a ready sandbox with the asked limits, and refills', async (t) => {
    const pool = new WarmPool({
      driver: made.driver,
      log: made.log,
      sizes: { base: 2 },
      limits: testLimits,
    })
    t.after(() => pool.close())
    pool.start()
    await pool.waitFull({ signal: AbortSignal.timeout(30_000) })
    assert.deepEqual(pool.readyCounts(), { base: 2 })
    const { sandbox, pooled } = await pool.acquire({
      template: 'base',
      limits: { ...testLimits, memoryMiB: 300 },
      labels: { owner: 'test' },
    })
    handedOut.push(sandbox)
    assert.equal(pooled, true)
    assert.equal(sandbox.info.limits.memoryMiB, 300)
    assert.equal((await sandbox.stats()).memoryLimitBytes, 300 * 1024 * 1024)
    assert.deepEqual(sandbox.info.labels, { owner: 'test' })
    assert.equal((await sh(sandbox, 'echo ready')).stdout, 'ready\n')
    await pool.waitFull({ signal: AbortSignal.timeout(30_000) })
    assert.deepEqual(pool.readyCounts(), { base: 2 })
  })

  it('never hands the same sandbox or its files to two callers', async (t) => {
    const pool = new WarmPool({
      driver: made.driver,
      log: made.log,
      sizes: { base: 2 },
      limits: testLimits,
    })
    t.after(() => pool.close())
    pool.start()
    await pool.waitFull({ signal: AbortSignal.timeout(30_000) })
    const first = (await pool.acquire({ template: 'base', limits: testLimits })).sandbox
    const second = (await pool.acquire({ template: 'base', limits: testLimits })).sandbox
    handedOut.push(first, second)
    assert.notEqual(first.id, second.id)
    await sh(first, 'echo first > /tmp/owner')
    assert.match((await sh(second, 'cat /tmp/owner 2>&1 || true')).stdout, /No such file/)
  })

  it('creates cold when the disk size differs or the pool is empty', async (t) => {
    const pool = new WarmPool({
      driver: made.driver,
      log: made.log,
      sizes: { base: 1 },
      limits: testLimits,
    })
    t.after(() => pool.close())
    const cold = await pool.acquire({
      template: 'base',
      limits: { ...testLimits, diskMiB: testLimits.diskMiB * 2 },
    })
    handedOut.push(cold.sandbox)
    assert.equal(cold.pooled, false)
    const empty = await pool.acquire({ template: 'base', limits: testLimits })
    handedOut.push(empty.sandbox)
    assert.equal(empty.pooled, false)
  })

  it('replaces a pooled sandbox that dies, and destroys idle ones on close', async () => {
    const pool = new WarmPool({
      driver: made.driver,
      log: made.log,
      sizes: { base: 1 },
      limits: testLimits,
    })
    pool.start()
    await pool.waitFull({ signal: AbortSignal.timeout(30_000) })
    const ids: string[] = []
    made.driver.onEvent((event) => {
      if (event.type === 'created') {
        ids.push(event.sandbox.id)
      }
    })
    // Adoption also finds the sandboxes earlier tests hold: pick the idle pooled one.
    const victim = (await made.driver.adopt()).find(isIdlePooled)
    assert.ok(victim !== undefined)
    await sh(victim, 'kill -KILL $PPID', { user: 'root' }).catch(() => undefined)
    await waitFor(() => Promise.resolve(ids.length >= 1), 20_000)
    await pool.waitFull({ signal: AbortSignal.timeout(30_000) })
    await pool.close()
    assert.deepEqual(pool.readyCounts(), { base: 0 })
  })
})
