/**
 * The server name (SNI) of a TLS ClientHello, read from the first bytes of a connection without
 * terminating TLS, so the egress proxy can decide before a byte goes upstream.
 */
import { InvalidArgumentError, errorMessage } from '@sandcell/shared'

export type TlsClientHelloResult =
  | { kind: 'need-more' }
  /** `name` as sent, decoded as Latin-1: not yet checked to be a host name. */
  | { kind: 'sni'; name: string }
  | { kind: 'no-sni' }
  | { kind: 'invalid'; reason: string }

/** The most bytes held while a ClientHello is incomplete; beyond, the connection is refused. */
export const maxClientHelloBytes = 16 * 1024

const recordHeaderBytes = 5
const handshakeHeaderBytes = 4
const contentTypeHandshake = 22
const handshakeTypeClientHello = 1
/** RFC 8446 5.1: a plaintext record carries at most 2^14 bytes. */
const maxRecordBytes = 16384
const extensionServerName = 0
const nameTypeHostName = 0

const needMore: TlsClientHelloResult = Object.freeze({ kind: 'need-more' })

function invalid(reason: string): TlsClientHelloResult {
  return { kind: 'invalid', reason }
}

/** Bounds-checked big-endian reads; a read past the end throws, naming what was cut short. */
class Reader {
  private offset = 0

  constructor(private readonly bytes: Buffer) {}

  get remaining(): number {
    return this.bytes.length - this.offset
  }

  take(length: number, what: string): Buffer {
    if (length > this.remaining) {
      throw new InvalidArgumentError(`${what} runs past the end of its enclosing field`)
    }
    const slice = this.bytes.subarray(this.offset, this.offset + length)
    this.offset += length
    return slice
  }

  u8(what: string): number {
    return this.take(1, what).readUInt8(0)
  }

  u16(what: string): number {
    return this.take(2, what).readUInt16BE(0)
  }
}

/** RFC 6066 3: exactly one host_name; other name types are undefined, so refused. */
function readServerName(data: Buffer): string {
  const reader = new Reader(data)
  const listBytes = reader.u16('server name list length')
  if (listBytes === 0 || listBytes !== reader.remaining) {
    throw new InvalidArgumentError('server name list length does not match its extension')
  }
  let name: string | undefined
  while (reader.remaining > 0) {
    const type = reader.u8('server name type')
    const value = reader.take(reader.u16('server name length'), 'server name')
    if (type !== nameTypeHostName) {
      throw new InvalidArgumentError(`server name of unknown type ${type}`)
    }
    if (name !== undefined) {
      throw new InvalidArgumentError('more than one host name in the server name list')
    }
    if (value.length === 0) {
      throw new InvalidArgumentError('empty host name')
    }
    name = value.toString('latin1')
  }
  if (name === undefined) {
    throw new InvalidArgumentError('no host name in the server name list')
  }
  return name
}

/** The body of a ClientHello handshake message (after its 4-byte header), RFC 8446 4.1.2. */
function readClientHello(body: Buffer): TlsClientHelloResult {
  const reader = new Reader(body)
  if (reader.u16('legacy version') >> 8 !== 3) {
    return invalid('ClientHello version is not TLS')
  }
  reader.take(32, 'random')
  const sessionIdBytes = reader.u8('session id length')
  if (sessionIdBytes > 32) {
    return invalid('session id longer than 32 bytes')
  }
  reader.take(sessionIdBytes, 'session id')
  const cipherSuiteBytes = reader.u16('cipher suites length')
  if (cipherSuiteBytes < 2 || cipherSuiteBytes % 2 !== 0) {
    return invalid('malformed cipher suite list')
  }
  reader.take(cipherSuiteBytes, 'cipher suites')
  const compressionBytes = reader.u8('compression methods length')
  if (compressionBytes < 1) {
    return invalid('no compression method')
  }
  reader.take(compressionBytes, 'compression methods')
  if (reader.remaining === 0) {
    // Extensions are optional before TLS 1.3: such a hello simply names no server.
    return { kind: 'no-sni' }
  }
  if (reader.u16('extensions length') !== reader.remaining) {
    return invalid('extensions length does not match the ClientHello')
  }
  const seen = new Set<number>()
  let name: string | undefined
  while (reader.remaining > 0) {
    const type = reader.u16('extension type')
    const data = reader.take(reader.u16('extension length'), `extension ${type}`)
    // RFC 8446 4.2 forbids repeats; a second server_name would let the proxy and the upstream
    // read different names, so none is let through.
    if (seen.has(type)) {
      return invalid(`extension ${type} appears twice`)
    }
    seen.add(type)
    if (type === extensionServerName) {
      name = readServerName(data)
    }
  }
  return name === undefined ? { kind: 'no-sni' } : { kind: 'sni', name }
}

/**
 * Reads the ClientHello at the start of `buffer` (a connection's bytes so far): reassembled
 * across TLS records and across reads, so call again with more bytes on `need-more`. Bytes after
 * the ClientHello are ignored. Holding {@link maxClientHelloBytes} without a whole ClientHello,
 * or one declared longer, is `invalid`.
 */
export function parseTlsClientHello(buffer: Buffer): TlsClientHelloResult {
  const fragments: Buffer[] = []
  const header: number[] = []
  let handshakeBytes = 0
  let messageBytes: number | undefined
  let offset = 0
  const moreOrTooLong = (): TlsClientHelloResult =>
    buffer.length >= maxClientHelloBytes
      ? invalid(`no whole ClientHello within ${maxClientHelloBytes} bytes`)
      : needMore
  for (;;) {
    // Checked byte by byte so that a stray first byte (plain HTTP, say) is refused at once.
    const available = buffer.length - offset
    if (available >= 1 && buffer[offset] !== contentTypeHandshake) {
      return invalid(fragments.length === 0 ? 'not a TLS handshake' : 'ClientHello interrupted')
    }
    if (available >= 2 && buffer[offset + 1] !== 3) {
      return invalid('TLS record version is not TLS')
    }
    if (available < recordHeaderBytes) {
      return moreOrTooLong()
    }
    const recordBytes = buffer.readUInt16BE(offset + 3)
    if (recordBytes === 0 || recordBytes > maxRecordBytes) {
      return invalid(`TLS record length ${recordBytes} out of range`)
    }
    const start = offset + recordHeaderBytes
    // A record still arriving is read as far as it goes: the hello may already be complete.
    const fragment = buffer.subarray(start, start + recordBytes)
    fragments.push(fragment)
    handshakeBytes += fragment.length
    for (let i = 0; header.length < handshakeHeaderBytes && i < fragment.length; i++) {
      header.push(fragment[i] as number)
    }
    if (header.length >= 1 && header[0] !== handshakeTypeClientHello) {
      return invalid('first handshake message is not a ClientHello')
    }
    if (messageBytes === undefined && header.length === handshakeHeaderBytes) {
      messageBytes = Buffer.from(header).readUIntBE(1, 3)
      if (handshakeHeaderBytes + messageBytes > maxClientHelloBytes) {
        return invalid(`ClientHello longer than ${maxClientHelloBytes} bytes`)
      }
    }
    if (messageBytes !== undefined && handshakeBytes >= handshakeHeaderBytes + messageBytes) {
      const message = Buffer.concat(fragments, handshakeBytes)
      const body = message.subarray(handshakeHeaderBytes, handshakeHeaderBytes + messageBytes)
      try {
        return readClientHello(body)
      } catch (err) {
        return invalid(errorMessage(err))
      }
    }
    if (fragment.length < recordBytes) {
      return moreOrTooLong()
    }
    offset = start + recordBytes
  }
}
