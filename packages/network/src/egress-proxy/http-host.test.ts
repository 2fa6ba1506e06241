// Host extraction from HTTP/1.x request heads, and the heads refused because an upstream could
// read them differently.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { maxRequestHeadBytes, parseHttpHost, type HttpHostResult } from './http-host.js'

function parse(head: string): HttpHostResult {
  return parseHttpHost(Buffer.from(head, 'latin1'))
}

function assertInvalid(head: string, reason?: RegExp): void {
  const result = parse(head)
  assert.equal(result.kind, 'invalid', JSON.stringify(head))
  if (reason !== undefined && result.kind === 'invalid') {
    assert.match(result.reason, reason)
  }
}

describe('parseHttpHost', () => {
  it('reads the Host header, any case, with whitespace trimmed and the port stripped', () => {
    assert.deepEqual(parse('GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n'), {
      kind: 'host',
      name: 'allowed.test',
    })
    assert.deepEqual(
      parse('POST /x?y=1 HTTP/1.0\r\nAccept: */*\r\nhOsT:\t Allowed.Test.:8080 \t\r\n\r\n'),
      { kind: 'host', name: 'Allowed.Test.' },
    )
  })

  it('asks for more bytes on every strict prefix of a head', () => {
    const head = 'GET /index.html HTTP/1.1\r\nHost: allowed.test\r\nUser-Agent: curl/8\r\n\r\n'
    for (let length = 0; length < head.length; length++) {
      assert.deepEqual(parse(head.slice(0, length)), { kind: 'need-more' }, `${length} bytes`)
    }
    assert.deepEqual(parse(head), { kind: 'host', name: 'allowed.test' })
  })

  it('ignores the bytes after the head: a body, a pipelined request', () => {
    const bytes =
      'POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\n\r\nbody' +
      'GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n'
    assert.deepEqual(parse(bytes), { kind: 'host', name: 'allowed.test' })
  })

  it('accepts an absolute-form or CONNECT target naming the Host, and OPTIONS *', () => {
    assert.equal(
      parse('GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n').kind,
      'host',
    )
    assert.equal(
      parse('GET HTTP://ALLOWED.test:80 HTTP/1.1\r\nHost: allowed.test\r\n\r\n').kind,
      'host',
    )
    assert.equal(
      parse('CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n').kind,
      'host',
    )
    assert.equal(parse('OPTIONS * HTTP/1.1\r\nHost: allowed.test\r\n\r\n').kind, 'host')
  })

  it('rejects a request without Host, or with Host given twice', () => {
    assertInvalid('GET / HTTP/1.1\r\nAccept: */*\r\n\r\n', /no Host/)
    assertInvalid(
      'GET / HTTP/1.1\r\nHost: allowed.test\r\nHOST: evil.test\r\n\r\n',
      /more than one/,
    )
    assertInvalid(
      'GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: allowed.test\r\n\r\n',
      /more than one/,
    )
  })

  it('rejects an empty Host, an IPv6 literal, user information and a malformed port', () => {
    assertInvalid('GET / HTTP/1.1\r\nHost:\r\n\r\n', /empty/)
    assertInvalid('GET / HTTP/1.1\r\nHost: :80\r\n\r\n', /empty/)
    assertInvalid('GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n', /IPv6/)
    assertInvalid('GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n', /IPv6/)
    assertInvalid('GET / HTTP/1.1\r\nHost: user@allowed.test\r\n\r\n', /user/)
    for (const port of ['', 'x', '65536', '123456', '80:80']) {
      assertInvalid(`GET / HTTP/1.1\r\nHost: allowed.test:${port}\r\n\r\n`, /port/)
    }
  })

  it('rejects a target naming another host than Host', () => {
    assertInvalid('GET http://evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n', /another host/)
    assertInvalid('CONNECT evil.test:443 HTTP/1.1\r\nHost: allowed.test\r\n\r\n', /another host/)
    assertInvalid('GET http://[::1]/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n', /IPv6/)
    assertInvalid('GET x HTTP/1.1\r\nHost: allowed.test\r\n\r\n', /target/)
  })

  it('rejects heads an upstream could split differently: bare LF or CR, folding, space before the colon', () => {
    assertInvalid('GET / HTTP/1.1\r\nX: a\nHost: evil.test\r\nHost: allowed.test\r\n\r\n', /bare/)
    assertInvalid('GET / HTTP/1.1\r\nX: a\rHost: evil.test\r\nHost: allowed.test\r\n\r\n', /bare/)
    assertInvalid('GET / HTTP/1.1\r\nHost: allowed.test\r\n evil.test\r\n\r\n', /folded/)
    assertInvalid('GET / HTTP/1.1\r\nHost : allowed.test\r\n\r\n', /malformed header/)
    assertInvalid('GET / HTTP/1.1\r\nHost: allowed.test\r\nX-A: \x00\r\n\r\n', /control/)
    assertInvalid('GET / HTTP/1.1\r\nno colon\r\nHost: allowed.test\r\n\r\n', /malformed header/)
  })

  it('rejects what is not an HTTP/1.x request at once, before the head is complete', () => {
    assertInvalid('\x16\x03\x01\x02\x00\x01')
    assertInvalid('GET / HTTP/1.1 x\r\n')
    assertInvalid('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
    assertInvalid('GET  / HTTP/1.1\r\nHost: allowed.test\r\n\r\n')
    assertInvalid('G\0')
  })

  it('rejects a head longer than the cap', () => {
    const long = `GET / HTTP/1.1\r\nHost: allowed.test\r\nX: ${'a'.repeat(maxRequestHeadBytes)}`
    assertInvalid(long, /longer than/)
    const justTooLong = `GET / HTTP/1.1\r\nHost: a.test\r\nX: ${'a'.repeat(maxRequestHeadBytes - 36)}\r\n\r\n`
    assert.equal(justTooLong.length, maxRequestHeadBytes + 1)
    assertInvalid(justTooLong, /longer than/)
    assert.equal(parse(justTooLong.slice(0, -5) + '\r\n\r\n').kind, 'host')
  })
})
