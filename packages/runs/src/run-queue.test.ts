import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ResourceExhaustedError } from '@sandcell/shared'
import { RunQueue } from './run-queue.js'

/** A promise and the function that settles it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open = (): void => undefined
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { opened, open }
}

/** A run that takes no time. */
const instant = { work: () => Promise.resolve(), after: () => Promise.resolve() }

/**
 * A queue of one slot, taken by a run that lasts until `finish()`, with metrics that count what
 * they are told.
 */
function busyQueue(options: { maxQueued: number; queueTimeoutMs: number }): {
  queue: RunQueue
  rejected: () => number
  waiting: number[]
  finish: () => Promise<void>
} {
  let rejected = 0
  const waiting: number[] = []
  const queue = new RunQueue({
    maxConcurrent: 1,
    ...options,
    metrics: { rejected: () => void (rejected += 1), waiting: (count) => void waiting.push(count) },
  })
  const busy = gate()
  const running = queue.run({ work: () => busy.opened, after: () => Promise.resolve() })
  return {
    queue,
    rejected: () => rejected,
    waiting,
    finish: async () => {
      busy.open()
      await running
      await queue.drain()
    },
  }
}

describe('RunQueue', () => {
  it('answers with the result at once and holds the slot until `after` is done', async () => {
    const queue = new RunQueue({ maxConcurrent: 1, maxQueued: 4, queueTimeoutMs: 10_000 })
    const cleanup = gate()
    const result = await queue.run({ work: () => Promise.resolve(42), after: () => cleanup.opened })
    assert.equal(result, 42)
    assert.deepEqual(queue.load(), { running: 1, waiting: 0 })
    cleanup.open()
    await queue.drain()
    assert.deepEqual(queue.load(), { running: 0, waiting: 0 })
  })

  it('passes on what the work throws, after cleaning up', async () => {
    const queue = new RunQueue({ maxConcurrent: 1, maxQueued: 4, queueTimeoutMs: 10_000 })
    let cleaned = false
    await assert.rejects(
      queue.run({
        work: () => Promise.reject(new Error('no sandbox')),
        after: () => Promise.resolve(void (cleaned = true)),
      }),
      /no sandbox/,
    )
    await queue.drain()
    assert.equal(cleaned, true)
  })

  it('turns a run away at once with 429 and a Retry-After when the queue is full', async () => {
    const { queue, rejected, finish } = busyQueue({ maxQueued: 1, queueTimeoutMs: 10_000 })
    const waiting = queue.run(instant)
    await assert.rejects(
      queue.run(instant),
      (err: unknown) =>
        err instanceof ResourceExhaustedError &&
        err.status === 429 &&
        typeof err.details?.retryAfterS === 'number' &&
        err.details.retryAfterS >= 1,
    )
    assert.equal(rejected(), 1)
    await finish()
    await waiting
  })

  it('turns a waiting run away with 429 when no slot frees in time', async (t) => {
    const { queue, rejected, waiting, finish } = busyQueue({ maxQueued: 4, queueTimeoutMs: 20 })
    // The queue's AbortSignal.timeout does not keep the process alive; a server's sockets do.
    const alive = setInterval(() => undefined, 1000)
    t.after(() => clearInterval(alive))
    await assert.rejects(
      queue.run(instant),
      (err: unknown) => err instanceof ResourceExhaustedError && /too many runs/.test(err.message),
    )
    assert.equal(rejected(), 1)
    assert.equal(waiting.at(-1), 0)
    await finish()
  })

  it("rejects with the signal's reason when the client gives up while waiting", async () => {
    const { queue, rejected, finish } = busyQueue({ maxQueued: 4, queueTimeoutMs: 10_000 })
    const abort = new AbortController()
    const waiting = queue.run({ ...instant, signal: abort.signal })
    abort.abort(new Error('the client went away'))
    await assert.rejects(waiting, /the client went away/)
    assert.equal(rejected(), 0)
    await finish()
  })
})
