// SNI extraction from hand-built ClientHellos and from one node:tls writes into an in-memory
// stream: reassembly across records and reads, and every malformed field refused.
import assert from 'node:assert/strict'
import { Duplex } from 'node:stream'
import { describe, it } from 'node:test'
import { connect } from 'node:tls'
import { maxClientHelloBytes, parseTlsClientHello } from './tls-client-hello.js'

function u16(value: number): Buffer {
  const bytes = Buffer.alloc(2)
  bytes.writeUInt16BE(value)
  return bytes
}

/** `body` behind a 1-byte length (`lengthBytes` 1) or a 2-byte one. */
function vector(body: Buffer, lengthBytes: 1 | 2): Buffer {
  return Buffer.concat([lengthBytes === 1 ? Buffer.from([body.length]) : u16(body.length), body])
}

function extension(type: number, data: Buffer): Buffer {
  return Buffer.concat([u16(type), vector(data, 2)])
}

/** A server_name extension's data holding `entries` as [name type, name]. */
function serverNameData(entries: readonly (readonly [number, string])[]): Buffer {
  const list = entries.map(([type, name]) =>
    Buffer.concat([Buffer.from([type]), vector(Buffer.from(name, 'latin1'), 2)]),
  )
  return vector(Buffer.concat(list), 2)
}

function sni(name: string): Buffer {
  return extension(0, serverNameData([[0, name]]))
}

interface HelloParts {
  /** Extension blocks, already encoded; undefined: the hello has no extensions field at all. */
  extensions?: Buffer[] | undefined
  sessionId?: Buffer
  cipherSuites?: Buffer
  compression?: Buffer
  /** Appended after the extensions, inside the message. */
  trailing?: Buffer
  version?: number
}

/** A ClientHello handshake message (type, 3-byte length, body). */
function clientHello(parts: HelloParts = {}): Buffer {
  const body = Buffer.concat([
    u16(parts.version ?? 0x0303),
    Buffer.alloc(32, 7),
    vector(parts.sessionId ?? Buffer.alloc(32, 1), 1),
    vector(parts.cipherSuites ?? Buffer.from([0x13, 0x01, 0x13, 0x02]), 2),
    vector(parts.compression ?? Buffer.from([0]), 1),
    parts.extensions === undefined ? Buffer.alloc(0) : vector(Buffer.concat(parts.extensions), 2),
    parts.trailing ?? Buffer.alloc(0),
  ])
  const header = Buffer.from([1, 0, 0, 0])
  header.writeUIntBE(body.length, 1, 3)
  return Buffer.concat([header, body])
}

/** `message` framed as handshake records of at most `recordBytes` each. */
function records(message: Buffer, recordBytes = 16384, type = 22): Buffer {
  const framed: Buffer[] = []
  for (let offset = 0; offset < message.length; offset += recordBytes) {
    const fragment = message.subarray(offset, offset + recordBytes)
    framed.push(Buffer.from([type, 3, 1]), u16(fragment.length), fragment)
  }
  return Buffer.concat(framed)
}

const helloWithSni = (name: string, others: Buffer[] = []) =>
  records(
    clientHello({ extensions: [extension(10, Buffer.from([0, 2, 0, 29])), sni(name), ...others] }),
  )

/** A ClientHello in one record with `extensions` and nothing else. */
function helloWith(...extensions: Buffer[]): Buffer {
  return records(clientHello({ extensions }))
}

function assertInvalid(bytes: Buffer, reason: RegExp, message?: string): void {
  const result = parseTlsClientHello(bytes)
  assert.equal(result.kind, 'invalid', message)
  assert.match(result.kind === 'invalid' ? result.reason : '', reason, message)
}

/** The first flight node:tls (OpenSSL) writes for `servername`, captured without any network. */
function captureClientHello(servername: string | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const transport = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        resolve(Buffer.from(chunk))
        callback()
        setImmediate(() => tls.destroy())
      },
    })
    const tls = connect({ socket: transport, ...(servername === undefined ? {} : { servername }) })
    tls.on('error', reject)
  })
}

describe('parseTlsClientHello', () => {
  it('reads the SNI of a ClientHello written by node:tls', async () => {
    const hello = await captureClientHello('allowed.test')
    assert.deepEqual(parseTlsClientHello(hello), { kind: 'sni', name: 'allowed.test' })
  })

  it('reports no SNI for a node:tls ClientHello without a server name', async () => {
    const hello = await captureClientHello(undefined)
    assert.deepEqual(parseTlsClientHello(hello), { kind: 'no-sni' })
  })

  it('asks for more bytes on every strict prefix of a ClientHello', () => {
    const hello = helloWithSni('allowed.test')
    for (let length = 0; length < hello.length; length++) {
      assert.deepEqual(
        parseTlsClientHello(hello.subarray(0, length)),
        { kind: 'need-more' },
        `${length} bytes`,
      )
    }
    assert.deepEqual(parseTlsClientHello(hello), { kind: 'sni', name: 'allowed.test' })
  })

  it('reassembles a ClientHello split over several TLS records, read in pieces', () => {
    const message = clientHello({
      extensions: [extension(21, Buffer.alloc(600)), sni('a.allowed.test')],
    })
    for (const recordBytes of [1, 3, 100, 512]) {
      const framed = records(message, recordBytes)
      for (let length = 0; length < framed.length; length += 1 + Math.floor(length / 7)) {
        const result = parseTlsClientHello(framed.subarray(0, length))
        assert.deepEqual(
          result,
          { kind: 'need-more' },
          `records of ${recordBytes}, ${length} bytes`,
        )
      }
      assert.deepEqual(parseTlsClientHello(framed), { kind: 'sni', name: 'a.allowed.test' })
    }
  })

  it('decides as soon as the ClientHello is whole, ignoring the records after it', () => {
    const hello = helloWithSni('allowed.test')
    const changeCipherSpec = Buffer.from([20, 3, 3, 0, 1, 1])
    const earlyData = Buffer.concat([Buffer.from([23, 3, 3]), u16(3), Buffer.from('abc')])
    const result = parseTlsClientHello(Buffer.concat([hello, changeCipherSpec, earlyData]))
    assert.deepEqual(result, { kind: 'sni', name: 'allowed.test' })
  })

  it('reports no SNI for a ClientHello without extensions or without server_name', () => {
    assert.deepEqual(parseTlsClientHello(records(clientHello())), { kind: 'no-sni' })
    const others = clientHello({ extensions: [extension(43, Buffer.from([2, 3, 4]))] })
    assert.deepEqual(parseTlsClientHello(records(others)), { kind: 'no-sni' })
  })

  it('returns the name as sent, for the proxy to check', () => {
    assert.deepEqual(parseTlsClientHello(helloWithSni('Allowed.TEST.')), {
      kind: 'sni',
      name: 'Allowed.TEST.',
    })
    assert.deepEqual(parseTlsClientHello(helloWithSni('a\0b')), { kind: 'sni', name: 'a\0b' })
  })

  it('rejects bytes that are not a TLS handshake at the first byte', () => {
    for (const bytes of ['G', 'GET / HTTP/1.1\r\n', '\x80\x2e\x01']) {
      assertInvalid(Buffer.from(bytes, 'latin1'), /not a TLS handshake/, JSON.stringify(bytes))
    }
    assertInvalid(Buffer.from([22, 2]), /record version/)
  })

  it('rejects records of length 0 or beyond 2^14', () => {
    assertInvalid(Buffer.from([22, 3, 1, 0, 0]), /record length 0 /)
    assertInvalid(Buffer.from([22, 3, 1, 0x40, 0x01]), /record length 16385 /)
  })

  it('rejects a first handshake message that is not a ClientHello', () => {
    const serverHello = Buffer.from(helloWithSni('allowed.test'))
    serverHello[5] = 2
    assertInvalid(serverHello.subarray(0, 6), /not a ClientHello/)
  })

  it('rejects another record type in the middle of a ClientHello', () => {
    const message = clientHello({ extensions: [sni('allowed.test')] })
    const framed = Buffer.concat([
      records(message.subarray(0, 20)),
      records(message.subarray(20), 16384, 23),
    ])
    assertInvalid(framed, /interrupted/)
  })

  it('rejects a ClientHello declared longer than the cap, before it arrives', () => {
    assertInvalid(Buffer.from([22, 3, 1, 0, 4, 1, 0, 0x40, 0x00]), /longer than 16384/)
  })

  it('rejects a ClientHello still incomplete after the cap, in many small records', () => {
    const message = clientHello({
      extensions: [extension(21, Buffer.alloc(15_500)), sni('a.test')],
    })
    const framed = records(message, 64)
    assert.ok(framed.length > maxClientHelloBytes)
    assert.deepEqual(parseTlsClientHello(framed.subarray(0, maxClientHelloBytes - 1)), {
      kind: 'need-more',
    })
    assertInvalid(framed.subarray(0, maxClientHelloBytes), /no whole ClientHello/)
  })

  it('rejects two server_name extensions, or two host names in one', () => {
    assertInvalid(helloWithSni('allowed.test', [sni('evil.test')]), /extension 0 appears twice/)
    const twoNames = serverNameData([
      [0, 'allowed.test'],
      [0, 'evil.test'],
    ])
    assertInvalid(helloWith(extension(0, twoNames)), /more than one host name/)
  })

  it('rejects an empty host name, an unknown name type and an empty server name list', () => {
    assertInvalid(helloWith(extension(0, serverNameData([[0, '']]))), /empty host name/)
    assertInvalid(helloWith(extension(0, serverNameData([[1, 'a.test']]))), /unknown type 1/)
    assertInvalid(helloWith(extension(0, serverNameData([]))), /list length does not match/)
    assertInvalid(helloWith(extension(0, Buffer.alloc(0))), /list length runs past/)
  })

  it('rejects lengths that disagree: a server name list, a name, an extension, the extensions', () => {
    const name = vector(Buffer.from('a.test'), 2)
    const listTooLong = Buffer.concat([u16(20), Buffer.from([0]), name])
    assertInvalid(helloWith(extension(0, listTooLong)), /list length does not match/)
    const nameTooLong = vector(Buffer.concat([Buffer.from([0]), u16(40), Buffer.from('a.test')]), 2)
    assertInvalid(helloWith(extension(0, nameTooLong)), /server name runs past/)
    const extensionTooLong = Buffer.concat([u16(0), u16(200), serverNameData([[0, 'a.test']])])
    assertInvalid(helloWith(extensionTooLong), /extension 0 runs past/)
    const trailing = clientHello({ extensions: [sni('a.test')], trailing: Buffer.from([0]) })
    assertInvalid(records(trailing), /extensions length does not match/)
  })

  it('rejects a malformed hello body: version, session id, cipher suites, compression', () => {
    const cases: [HelloParts, RegExp][] = [
      [{ version: 0x0203 }, /version is not TLS/],
      [{ sessionId: Buffer.alloc(33) }, /session id longer/],
      [{ cipherSuites: Buffer.alloc(0) }, /cipher suite/],
      [{ cipherSuites: Buffer.alloc(3) }, /cipher suite/],
      [{ compression: Buffer.alloc(0) }, /no compression/],
    ]
    for (const [parts, reason] of cases) {
      const hello = clientHello({ ...parts, extensions: [sni('allowed.test')] })
      assertInvalid(records(hello), reason)
    }
  })

  it('rejects a ClientHello cut short inside its own length', () => {
    const hello = clientHello({ extensions: [sni('allowed.test')] })
    // The handshake header claims 10 bytes; the body holds only the version and part of random.
    const cut = Buffer.concat([Buffer.from([1, 0, 0, 10]), hello.subarray(4, 14)])
    assertInvalid(records(cut), /random runs past/)
  })
})
