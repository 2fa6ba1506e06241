import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { forwardedRequestHeaders, forwardedResponseHeaders } from './forward-headers.js'

describe('forwarded headers', () => {
  it('drops hop-by-hop and routing headers and keeps the rest in order', () => {
    const out = forwardedRequestHeaders({
      rawHeaders: [
        'Host',
        'proxy.example',
        'Connection',
        'keep-alive, X-Hop',
        'X-Hop',
        '1',
        'Keep-Alive',
        'timeout=5',
        'E2b-Sandbox-Id',
        'abc',
        'E2b-Sandbox-Port',
        '49983',
        'Proxy-Authorization',
        'Basic x',
        'TE',
        'trailers',
        'Upgrade',
        'websocket',
        'Expect',
        '100-continue',
        'X-Access-Token',
        'secret',
        'Set-Me',
        'a',
        'Set-Me',
        'b',
      ],
      connection: 'keep-alive, X-Hop',
      remoteAddress: '10.0.0.9',
    })
    assert.deepEqual(out, [
      'Host',
      'proxy.example',
      'X-Access-Token',
      'secret',
      'Set-Me',
      'a',
      'Set-Me',
      'b',
      'x-forwarded-for',
      '10.0.0.9',
    ])
  })

  it('appends the client address to x-forwarded-for and keeps a chunked body chunked', () => {
    const out = forwardedRequestHeaders({
      rawHeaders: [
        'X-Forwarded-For',
        '1.1.1.1',
        'x-forwarded-for',
        '2.2.2.2',
        'Transfer-Encoding',
        'chunked',
      ],
      connection: undefined,
      remoteAddress: '::1',
    })
    assert.deepEqual(out, [
      'host',
      'envd',
      'transfer-encoding',
      'chunked',
      'x-forwarded-for',
      '1.1.1.1, 2.2.2.2, ::1',
    ])
  })

  it('drops hop-by-hop response headers', () => {
    const out = forwardedResponseHeaders(
      [
        'Content-Type',
        'application/connect+json',
        'Connection',
        'keep-alive',
        'Keep-Alive',
        'timeout=5',
        'Transfer-Encoding',
        'chunked',
        'Proxy-Authenticate',
        'Basic',
        'Date',
        'now',
      ],
      'keep-alive',
    )
    assert.deepEqual(out, ['Content-Type', 'application/connect+json', 'Date', 'now'])
  })
})
