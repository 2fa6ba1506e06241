import assert from 'node:assert/strict'
import { describe, it, mock } from 'node:test'
import { StepTimer } from './step-timer.js'

describe('StepTimer', () => {
  it('times each step from the end of the one before, rounded', () => {
    let now = 1000
    mock.method(performance, 'now', () => now)
    try {
      const timer = new StepTimer({ decimals: 1 })
      now = 1012.345
      timer.step('first')
      now = 1020
      timer.step('second')
      timer.record('queue', 3.26)
      assert.deepEqual(timer.timings, { first: 12.3, second: 7.7, queue: 3.3 })
      assert.equal(timer.elapsedMs(), 20)
    } finally {
      mock.restoreAll()
    }
  })
})
