import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ResourceExhaustedError } from '@sandcell/shared'
import { RunQueue } from './run-queue.js'

/** Metrics hooks that count what they are told. */
function counting(): {
  rejected: number
  waiting: number[]
  hooks: { rejected(): void; waiting(count: number): void }
} {
  const counts = {
    rejected: 0,
    waiting: [] as number[],
    hooks: {
      rejected: () => {
        counts.rejected += 1
      },
      waiting: (count: number) => {
        counts.waiting.push(count)
      },
    },
  }
  return counts
}

/** A promise and the function that settles it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open = (): void => undefined
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { opened, open }
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
    const counts = counting()
    const queue = new RunQueue({
      maxConcurrent: 1,
      maxQueued: 1,
      queueTimeoutMs: 10_000,
      metrics: counts.hooks,
    })
    const busy = gate()
    const running = queue.run({ work: () => busy.opened, after: () => Promise.resolve() })
    const waiting = queue.run({ work: () => Promise.resolve(), after: () => Promise.resolve() })
    await assert.rejects(
      queue.run({ work: () => Promise.resolve(), after: () => Promise.resolve() }),
      (err: unknown) =>
        err instanceof ResourceExhaustedError &&
        err.status === 429 &&
        typeof err.details?.retryAfterS === 'number' &&
        err.details.retryAfterS >= 1,
    )
    assert.equal(counts.rejected, 1)
    busy.open()
    await Promise.all([running, waiting])
    await queue.drain()
  })

  it('turns a waiting run away with 429 when no slot frees in time', async (t) => {
    const counts = counting()
    const queue = new RunQueue({
      maxConcurrent: 1,
      maxQueued: 4,
      queueTimeoutMs: 20,
      metrics: counts.hooks,
    })
    const busy = gate()
    const running = queue.run({ work: () => busy.opened, after: () => Promise.resolve() })
    // The queue's AbortSignal.timeout does not keep the process alive; a server's sockets do.
    const alive = setInterval(() => undefined, 1000)
    t.after(() => clearInterval(alive))
    await assert.rejects(
      queue.run({ work: () => Promise.resolve(), after: () => Promise.resolve() }),
      (err: unknown) => err instanceof ResourceExhaustedError && /too many runs/.test(err.message),
    )
    assert.equal(counts.rejected, 1)
    assert.equal(counts.waiting.at(-1), 0)
    busy.open()
    await running
    await queue.drain()
  })

  it("rejects with the signal's reason when the client gives up while waiting", async () => {
    const counts = counting()
    const queue = new RunQueue({
      maxConcurrent: 1,
      maxQueued: 4,
      queueTimeoutMs: 10_000,
      metrics: counts.hooks,
    })
    const busy = gate()
    const running = queue.run({ work: () => busy.opened, after: () => Promise.resolve() })
    const abort = new AbortController()
    const waiting = queue.run({
      work: () => Promise.resolve(),
      after: () => Promise.resolve(),
      signal: abort.signal,
    })
    abort.abort(new Error('the client went away'))
    await assert.rejects(waiting, /the client went away/)
    assert.equal(counts.rejected, 0)
    busy.open()
    await running
    await queue.drain()
  })
})
