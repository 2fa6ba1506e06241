import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { UnavailableError, createSilentLogger } from '@sandcell/shared'
import { TransientFailure, describeNetworkError, withRetries } from './registry-http.js'

const log = createSilentLogger()

describe('withRetries', () => {
  it('retries transient failures and returns the first success', async () => {
    let attempts = 0
    const result = await withRetries('r.example', 'fetch x', { retries: 3, log }, () => {
      attempts += 1
      return attempts < 3
        ? Promise.reject(new TransientFailure('r.example answered 503', 0))
        : Promise.resolve('ok')
    })
    assert.equal(result, 'ok')
    assert.equal(attempts, 3)
  })

  it('gives up with the host, the last failure and the attempts', async () => {
    await assert.rejects(
      withRetries('r.example', 'fetch x', { retries: 1, log }, () =>
        Promise.reject(new TransientFailure('r.example answered 429', 0)),
      ),
      (err: Error) =>
        err instanceof UnavailableError &&
        /^registry r\.example is unavailable: r\.example answered 429 \(2 attempts over \d+\.\d s to fetch x\)/.test(
          err.message,
        ),
    )
  })

  it('does not retry other errors', async () => {
    let attempts = 0
    await assert.rejects(
      withRetries('r.example', 'fetch x', { retries: 3, log }, () => {
        attempts += 1
        return Promise.reject(new Error('bad digest'))
      }),
      /bad digest/,
    )
    assert.equal(attempts, 1)
  })

  it('stops waiting when aborted', async () => {
    const controller = new AbortController()
    const pending = withRetries(
      'r.example',
      'fetch x',
      { retries: 3, log, signal: controller.signal },
      () => Promise.reject(new TransientFailure('down', 60_000)),
    )
    controller.abort(new Error('caller gave up'))
    await assert.rejects(pending, /caller gave up/)
  })
})

describe('describeNetworkError', () => {
  it('puts undici codes into words', () => {
    const url = new URL('http://127.0.0.1:5000/v2/')
    assert.equal(
      describeNetworkError({ code: 'UND_ERR_HEADERS_TIMEOUT' }, url, 300),
      '127.0.0.1:5000 did not answer within 300 ms',
    )
    assert.equal(
      describeNetworkError({ code: 'ECONNREFUSED' }, url, 300),
      '127.0.0.1:5000 refused the connection (nothing listens there)',
    )
  })
})
