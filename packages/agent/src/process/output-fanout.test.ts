import assert from 'node:assert/strict'
import { describe, it, mock } from 'node:test'
import { ResourceExhaustedError, createSilentLogger } from '@sandcell/shared'
import { OutputFanout } from './output-fanout.js'

function fanout(options: { stallMs?: number } = {}) {
  const source = { paused: false, pauses: 0, resumes: 0 }
  const hub = new OutputFanout<string>({
    highWaterBytes: 100,
    lowWaterBytes: 20,
    hardLimitBytes: 1000,
    stallMs: options.stallMs ?? 1000,
    pause: () => {
      source.paused = true
      source.pauses += 1
    },
    resume: () => {
      source.paused = false
      source.resumes += 1
    },
    log: createSilentLogger(),
  })
  return { hub, source }
}

describe('OutputFanout', () => {
  it('delivers every event to every subscriber from its subscription on, then the final one', async () => {
    const { hub } = fanout()
    const early = hub.subscribe()
    hub.publish('a', 1)
    const late = hub.subscribe()
    hub.publish('b', 1)
    hub.end('end')
    const read = async (s: AsyncIterable<string>) => {
      const out: string[] = []
      for await (const e of s) {
        out.push(e)
      }
      return out
    }
    assert.deepEqual(await read(early), ['a', 'b', 'end'])
    assert.deepEqual(await read(late), ['b', 'end'])
    assert.deepEqual(await read(hub.subscribe()), ['end'])
  })

  it('discards events nobody listens to', () => {
    const { hub, source } = fanout()
    hub.publish('x', 10_000)
    assert.equal(source.paused, false)
  })

  it('pauses the source above the high-water mark and resumes below the low one', async () => {
    const { hub, source } = fanout()
    const subscription = hub.subscribe()
    const iterator = subscription[Symbol.asyncIterator]()
    hub.publish('1', 60)
    assert.equal(source.paused, false)
    hub.publish('2', 60)
    assert.equal(source.paused, true)
    await iterator.next()
    assert.equal(source.paused, true, '60 bytes left is above the low-water mark')
    await iterator.next()
    assert.equal(source.paused, false)
    assert.deepEqual([source.pauses, source.resumes], [1, 1])
  })

  it('drops a subscriber that holds a paused source without reading, and resumes for the rest', async () => {
    mock.timers.enable({ apis: ['setInterval', 'Date'] })
    try {
      const { hub, source } = fanout({ stallMs: 1000 })
      const stuck = hub.subscribe()
      const reader = hub.subscribe()
      const readerIterator = reader[Symbol.asyncIterator]()
      hub.publish('big', 150)
      assert.equal(source.paused, true)
      await readerIterator.next()
      mock.timers.tick(999)
      assert.equal(source.paused, true)
      mock.timers.tick(300)
      assert.equal(source.paused, false, 'resumed once the stuck subscriber was dropped')
      await assert.rejects(stuck[Symbol.asyncIterator]().next(), ResourceExhaustedError)
      hub.publish('more', 1)
      assert.deepEqual(await readerIterator.next(), { value: 'more', done: false })
    } finally {
      mock.timers.reset()
    }
  })

  it('does not drop a slow subscriber that keeps reading', async () => {
    mock.timers.enable({ apis: ['setInterval', 'Date'] })
    try {
      const { hub, source } = fanout({ stallMs: 1000 })
      const slow = hub.subscribe()
      const iterator = slow[Symbol.asyncIterator]()
      for (let i = 0; i < 10; i += 1) {
        hub.publish(`e${i}`, 30)
      }
      assert.equal(source.paused, true)
      for (let i = 0; i < 10; i += 1) {
        mock.timers.tick(500)
        assert.equal((await iterator.next()).value, `e${i}`)
      }
      assert.equal(source.paused, false)
      assert.deepEqual([source.pauses, source.resumes], [1, 1])
    } finally {
      mock.timers.reset()
    }
  })

  it('drops a subscriber past the hard limit at once', async () => {
    const { hub } = fanout()
    const subscription = hub.subscribe()
    hub.publish('huge', 2000)
    await assert.rejects(
      subscription[Symbol.asyncIterator]().next(),
      /fell more than 1000 bytes behind/,
    )
  })

  it('ends a closed subscription and forgets it', async () => {
    const { hub, source } = fanout()
    const subscription = hub.subscribe()
    hub.publish('x', 150)
    assert.equal(source.paused, true)
    subscription.close()
    assert.equal(source.paused, false)
    assert.equal(hub.subscriberCount, 0)
    assert.deepEqual(await subscription[Symbol.asyncIterator]().next(), {
      value: undefined,
      done: true,
    })
  })
})
