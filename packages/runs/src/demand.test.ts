import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { DemandEstimator } from './demand.js'

const options = { min: 1, max: 4, windowMs: 10_000, createMs: 200 }

describe('DemandEstimator', () => {
  it('keeps the minimum without demand', () => {
    assert.equal(new DemandEstimator(options).target(0), 1)
    assert.equal(new DemandEstimator({ ...options, min: 0 }).target(0), 0)
  })

  it('settles at the arrival rate of a steady stream', () => {
    const demand = new DemandEstimator(options)
    for (let t = 0; t <= 60_000; t += 100) {
      demand.arrived(t)
    }
    const rate = demand.ratePerSecond(60_000)
    assert.ok(rate > 9 && rate < 11, `10/s measured as ${rate}`)
  })

  it('sizes the pool as rate × (hold + create), within the bounds', () => {
    const demand = new DemandEstimator(options)
    for (let t = 0; t <= 60_000; t += 500) {
      demand.arrived(t)
      demand.finished(100)
    }
    // 2/s × (100 + 200) ms = 0.6 in flight -> 1
    assert.equal(demand.target(60_000), 1)
    for (let t = 60_000; t <= 120_000; t += 50) {
      demand.arrived(t)
      demand.finished(300)
    }
    // 20/s × 0.5 s = 10 -> the maximum
    assert.equal(demand.target(120_000), 4)
  })

  it('forgets demand after a few windows', () => {
    const demand = new DemandEstimator({ ...options, min: 0 })
    for (let t = 0; t <= 10_000; t += 50) {
      demand.arrived(t)
      demand.finished(300)
    }
    assert.ok(demand.target(10_000) > 0)
    assert.equal(demand.target(10_000 + 100_000), 0)
  })
})
