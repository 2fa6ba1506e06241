/**
 * The part of the DNS wire format the forwarder judges itself: which client messages it relays,
 * the question name exactly as an upstream will read it, error replies that echo the client's
 * question byte for byte, and RFC 1035 TCP framing.
 */
import { decode, type DecodedPacket } from 'dns-packet'
import { BugError } from '@sandcell/shared'

/** The largest message taken from a client, bytes: real queries are a few hundred. */
export const maxQueryBytes = 16 * 1024

/**
 * Records a query may hold in all (its question, an OPT, a TSIG…). Each compressed name may
 * walk a pointer chain across the whole message, so decoding a message of many records costs
 * time quadratic in its size: a crafted 16 KiB query takes ~30 ms, which no stub resolver needs.
 */
export const maxQueryRecords = 8

/** Response codes the forwarder answers with itself (RFC 1035 section 4.1.1). */
export const rcodes = {
  formErr: 1,
  servFail: 2,
  notImp: 4,
  refused: 5,
} as const

export type Rcode = (typeof rcodes)[keyof typeof rcodes]

const headerBytes = 12
const qrBit = 0x8000
const opcodeMask = 0x7800
const rdBit = 0x0100
const raBit = 0x0080
const cdBit = 0x0010
/** RFC 1035 section 2.3.4, counting the length octets and the root label. */
const maxNameBytes = 255

export interface DnsQuestion {
  /**
   * Lowercase, no trailing dot (the root is ''), in presentation form: `\.`, `\\` and `\DDD`
   * stand for label bytes that would otherwise make the text mean another name.
   */
  name: string
  /** The record type as dns-packet names it: 'A', 'AAAA', 'UNKNOWN_65280'… */
  type: string
}

/** What to do with one message from a client. */
export type QueryVerdict =
  | { action: 'forward'; question: DnsQuestion }
  | { action: 'reply'; rcode: Rcode; reason: string; question: DnsQuestion | undefined }
  | { action: 'drop'; reason: string }

function presentLabel(label: Buffer): string {
  let text = ''
  for (const byte of label) {
    if (byte >= 0x41 && byte <= 0x5a) {
      text += String.fromCharCode(byte + 0x20)
    } else if (byte === 0x2e || byte === 0x5c) {
      // A dot inside a label is legal on the wire; unescaped, `a.b` in one label would read
      // as the two-label name the policy might allow.
      text += `\\${String.fromCharCode(byte)}`
    } else if (byte < 0x21 || byte > 0x7e) {
      text += `\\${String(byte).padStart(3, '0')}`
    } else {
      text += String.fromCharCode(byte)
    }
  }
  return text
}

/**
 * The first question's name in presentation form and where the question ends, read from the
 * labels themselves rather than dns-packet's joined UTF-8 text, so the name judged is the name
 * relayed. Undefined for a compression pointer (nothing precedes the first name to point at but
 * the header) or a question that runs past the message.
 */
function readFirstQuestion(message: Buffer): { name: string; end: number } | undefined {
  const labels: string[] = []
  let offset = headerBytes
  for (;;) {
    if (offset >= message.length) {
      return undefined
    }
    const length = message.readUInt8(offset)
    if (length === 0) {
      break
    }
    if (length > 63 || offset + 1 + length > message.length) {
      return undefined
    }
    labels.push(presentLabel(message.subarray(offset + 1, offset + 1 + length)))
    offset += 1 + length
  }
  offset += 1
  if (offset - headerBytes > maxNameBytes || offset + 4 > message.length) {
    return undefined
  }
  return { name: labels.join('.'), end: offset + 4 }
}

/**
 * Decides what becomes of a client's message: relay it (one question, opcode QUERY), answer
 * FORMERR or NOTIMP, or drop it unanswered (too short or long, a response, too many records,
 * or bytes dns-packet cannot decode).
 */
export function inspectQuery(message: Buffer): QueryVerdict {
  if (message.length < headerBytes) {
    return { action: 'drop', reason: 'shorter than a header' }
  }
  if (message.length > maxQueryBytes) {
    return { action: 'drop', reason: 'oversized' }
  }
  const flags = message.readUInt16BE(2)
  if ((flags & qrBit) !== 0) {
    // Answering responses could start a loop between two forwarders.
    return { action: 'drop', reason: 'a response, not a query' }
  }
  let records = 0
  for (let offset = 4; offset < headerBytes; offset += 2) {
    records += message.readUInt16BE(offset)
  }
  if (records > maxQueryRecords) {
    return { action: 'drop', reason: 'too many records' }
  }
  let packet: DecodedPacket
  try {
    packet = decode(message)
  } catch {
    return { action: 'drop', reason: 'undecodable' }
  }
  const first = readFirstQuestion(message)
  const type = packet.questions?.[0]?.type
  const question =
    first === undefined || type === undefined ? undefined : { name: first.name, type }
  const opcode = (flags & opcodeMask) >> 11
  if (opcode !== 0) {
    return { action: 'reply', rcode: rcodes.notImp, reason: `opcode ${opcode}`, question }
  }
  const questionCount = message.readUInt16BE(4)
  if (questionCount !== 1) {
    return {
      action: 'reply',
      rcode: rcodes.formErr,
      reason: `${questionCount} questions`,
      question,
    }
  }
  if (question === undefined) {
    return {
      action: 'reply',
      rcode: rcodes.formErr,
      reason: 'compressed question name',
      question,
    }
  }
  return { action: 'forward', question }
}

/**
 * A reply the forwarder makes itself: the query's id, opcode, RD and CD bits, RA set, the
 * given rcode, and the first question copied byte for byte (re-encoding it would mangle labels
 * holding dots or bytes that are not UTF-8). Never longer than the query, so never an amplifier.
 * @throws BugError for a message shorter than a header (inspectQuery drops those)
 */
export function buildReply(query: Buffer, rcode: Rcode): Buffer {
  if (query.length < headerBytes) {
    throw new BugError(`a ${query.length}-byte message has no header to answer`)
  }
  const question = query.readUInt16BE(4) > 0 ? readFirstQuestion(query) : undefined
  const reply = Buffer.alloc(question?.end ?? headerBytes)
  query.copy(reply, 0, 0, reply.length)
  const flags = query.readUInt16BE(2)
  reply.writeUInt16BE(qrBit | (flags & (opcodeMask | rdBit | cdBit)) | raBit | rcode, 2)
  reply.writeUInt16BE(question === undefined ? 0 : 1, 4)
  reply.fill(0, 6, headerBytes)
  return reply
}

/** Whether `reply` may answer `query`: a response carrying the same id. */
export function isReplyTo(reply: Buffer, query: Buffer): boolean {
  return (
    reply.length >= headerBytes &&
    query.length >= headerBytes &&
    (reply.readUInt16BE(2) & qrBit) !== 0 &&
    reply.readUInt16BE(0) === query.readUInt16BE(0)
  )
}

/** One step of reading RFC 1035 TCP framing (a two-byte length before each message). */
export type Frame =
  | { kind: 'message'; message: Buffer; rest: Buffer }
  | { kind: 'incomplete' }
  | { kind: 'oversized'; sizeBytes: number }

/**
 * Takes the first framed message off `buffer`. A length over `maxBytes` is reported as soon as
 * the prefix arrives, so a hostile length is never buffered for. The message is a copy: a
 * query waiting on an upstream must not keep the whole read chunk it came in alive.
 */
export function takeFrame(buffer: Buffer, maxBytes: number): Frame {
  if (buffer.length < 2) {
    return { kind: 'incomplete' }
  }
  const sizeBytes = buffer.readUInt16BE(0)
  if (sizeBytes > maxBytes) {
    return { kind: 'oversized', sizeBytes }
  }
  if (buffer.length < 2 + sizeBytes) {
    return { kind: 'incomplete' }
  }
  return {
    kind: 'message',
    message: Buffer.from(buffer.subarray(2, 2 + sizeBytes)),
    rest: buffer.subarray(2 + sizeBytes),
  }
}

/** `message` with its two-byte length prefix. */
export function frame(message: Buffer): Buffer {
  const framed = Buffer.allocUnsafe(2 + message.length)
  framed.writeUInt16BE(message.length, 0)
  message.copy(framed, 2)
  return framed
}
