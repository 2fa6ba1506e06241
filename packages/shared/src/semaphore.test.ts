import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Semaphore } from './semaphore.js'

describe('Semaphore', () => {
  it('runs at most `limit` operations at once, the rest in order', async () => {
    const semaphore = new Semaphore(2)
    let running = 0
    let peak = 0
    const order: number[] = []
    await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        semaphore.run(async () => {
          running += 1
          peak = Math.max(peak, running)
          await new Promise((resolve) => setImmediate(resolve))
          order.push(i)
          running -= 1
        }),
      ),
    )
    assert.equal(peak, 2)
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5])
  })

  it('frees the slot when an operation fails', async () => {
    const semaphore = new Semaphore(1)
    await assert.rejects(semaphore.run(() => Promise.reject(new Error('boom'))))
    assert.equal(await semaphore.run(() => Promise.resolve('next')), 'next')
  })

  it('gives up a waiting place when the signal aborts', async () => {
    const semaphore = new Semaphore(1)
    let release!: () => void
    const holder = semaphore.run(() => new Promise<void>((resolve) => (release = resolve)))
    const controller = new AbortController()
    const waiter = semaphore.run(() => Promise.resolve('ran'), controller.signal)
    controller.abort(new Error('gave up'))
    await assert.rejects(waiter, /gave up/)
    assert.equal(semaphore.waiting, 0)
    release()
    await holder
    assert.equal(semaphore.active, 0)
  })
})
