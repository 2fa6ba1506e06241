import assert from 'node:assert/strict'
import { describe, it, mock } from 'node:test'
import { AsyncQueue, keepaliveIntervalMs, withKeepalive } from './async-queue.js'

describe('AsyncQueue', () => {
  it('hands items to one consumer in order and ends after them', async () => {
    const queue = new AsyncQueue<number>()
    queue.push(1)
    queue.push(2)
    queue.end()
    const seen: number[] = []
    for await (const item of queue) {
      seen.push(item)
    }
    assert.deepEqual(seen, [1, 2])
    assert.equal(queue.push(3), false)
  })

  it('reports overflow instead of growing past its limit', () => {
    const queue = new AsyncQueue<number>({ maxItems: 1 })
    assert.equal(queue.push(1), true)
    assert.equal(queue.push(2), false)
  })

  it('throws the end error after draining', async () => {
    const queue = new AsyncQueue<number>()
    queue.push(1)
    queue.end(new Error('boom'))
    const iterator = queue[Symbol.asyncIterator]()
    assert.deepEqual(await iterator.next(), { value: 1, done: false })
    await assert.rejects(iterator.next(), /boom/)
  })

  it('wakes a waiting consumer and ends it on return()', async () => {
    const queue = new AsyncQueue<string>()
    const iterator = queue[Symbol.asyncIterator]()
    const pending = iterator.next()
    queue.push('x')
    assert.deepEqual(await pending, { value: 'x', done: false })
    const waiting = iterator.next()
    await iterator.return?.()
    assert.deepEqual(await waiting, { value: undefined, done: true })
  })
})

describe('withKeepalive', () => {
  it('inserts a keepalive after each quiet interval and passes items through', async () => {
    mock.timers.enable({ apis: ['setTimeout'] })
    try {
      const queue = new AsyncQueue<string>()
      const merged = withKeepalive(queue, 1000, () => 'ka')[Symbol.asyncIterator]()
      const first = merged.next()
      await Promise.resolve()
      mock.timers.tick(1000)
      assert.deepEqual(await first, { value: 'ka', done: false })
      const second = merged.next()
      queue.push('item')
      assert.deepEqual(await second, { value: 'item', done: false })
      queue.end()
      assert.deepEqual(await merged.next(), { value: undefined, done: true })
    } finally {
      mock.timers.reset()
    }
  })

  it('parses the Keepalive-Ping-Interval header in seconds, at least 1', () => {
    assert.equal(keepaliveIntervalMs(null), undefined)
    assert.equal(keepaliveIntervalMs('50'), 50_000)
    assert.equal(keepaliveIntervalMs('0.01'), 1000)
    assert.equal(keepaliveIntervalMs('-1'), undefined)
    assert.equal(keepaliveIntervalMs('soon'), undefined)
  })
})
