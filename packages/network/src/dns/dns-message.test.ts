import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { decode, encode, RECURSION_DESIRED, type OptAnswer, type Packet } from 'dns-packet'
import {
  buildReply,
  frame,
  inspectQuery,
  isReplyTo,
  maxQueryBytes,
  rcodes,
  takeFrame,
} from './dns-message.js'

function query(packet: Packet = {}): Buffer {
  return encode({
    type: 'query',
    id: 4242,
    flags: RECURSION_DESIRED,
    questions: [{ type: 'A', name: 'example.com' }],
    ...packet,
  })
}

/** A query for one name given as raw labels, so a label may hold any byte. */
function rawQuery(labels: readonly Buffer[]): Buffer {
  const header = Buffer.from([0x10, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
  const name = Buffer.concat([
    ...labels.flatMap((label) => [Buffer.from([label.length]), label]),
    Buffer.from([0]),
  ])
  return Buffer.concat([header, name, Buffer.from([0, 1, 0, 1])])
}

function withFlags(message: Buffer, flags: number): Buffer {
  const copy = Buffer.from(message)
  copy.writeUInt16BE(flags, 2)
  return copy
}

function opt(udpPayloadSize: number): OptAnswer {
  return {
    type: 'OPT',
    name: '.',
    udpPayloadSize,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [],
  }
}

function rcodeOf(reply: Buffer): number {
  return reply.readUInt16BE(2) & 0xf
}

describe('inspectQuery', () => {
  it('forwards a one-question query, its name lowercase without the trailing dot', () => {
    const verdict = inspectQuery(query({ questions: [{ type: 'AAAA', name: 'WWW.Example.COM.' }] }))
    assert.deepEqual(verdict, {
      action: 'forward',
      question: { name: 'www.example.com', type: 'AAAA' },
    })
  })

  it('forwards a query carrying an EDNS OPT record', () => {
    const verdict = inspectQuery(query({ additionals: [opt(1232)] }))
    assert.equal(verdict.action, 'forward')
  })

  it('names the root as the empty string', () => {
    const verdict = inspectQuery(rawQuery([]))
    assert.deepEqual(verdict, { action: 'forward', question: { name: '', type: 'A' } })
  })

  it('cannot pass one label holding a dot off as two labels', () => {
    const verdict = inspectQuery(rawQuery([Buffer.from('allowed.com')]))
    assert.equal(verdict.action, 'forward')
    assert.equal(verdict.question.name, 'allowed\\.com')
  })

  it('cannot hide bytes in a label: backslashes, spaces, controls and non-ASCII are escaped', () => {
    const verdict = inspectQuery(
      rawQuery([Buffer.from('a\\b c'), Buffer.from([0x00, 0xc3, 0xa9]), Buffer.from('com')]),
    )
    assert.equal(verdict.action, 'forward')
    assert.equal(verdict.question.name, 'a\\\\b\\032c.\\000\\195\\169.com')
  })

  it('drops a message shorter than a header', () => {
    assert.deepEqual(inspectQuery(Buffer.from([1, 2, 3])), {
      action: 'drop',
      reason: 'shorter than a header',
    })
  })

  it('drops a message larger than any query', () => {
    const big = Buffer.concat([query(), Buffer.alloc(maxQueryBytes)])
    assert.equal(inspectQuery(big).action, 'drop')
  })

  it('drops responses, so two forwarders cannot answer each other forever', () => {
    assert.deepEqual(inspectQuery(withFlags(query(), 0x8180)), {
      action: 'drop',
      reason: 'a response, not a query',
    })
  })

  it('drops a question that runs past the end of the message', () => {
    const message = query()
    assert.deepEqual(inspectQuery(message.subarray(0, message.length - 3)), {
      action: 'drop',
      reason: 'undecodable',
    })
  })

  it('rejects a message claiming more records than a query holds, without decoding them', () => {
    // A pointer chain across the message makes decoding each record walk it again.
    const message = Buffer.alloc(16_000)
    query().copy(message)
    message.writeUInt16BE(1000, 10)
    for (let offset = 40; offset + 2 <= message.length; offset += 2) {
      message.writeUInt16BE(0xc000 | (offset - 2), offset)
    }
    assert.deepEqual(inspectQuery(message), { action: 'drop', reason: 'too many records' })
  })

  it('answers NOTIMP to an opcode other than QUERY, naming its question', () => {
    const update = withFlags(query(), 5 << 11)
    assert.deepEqual(inspectQuery(update), {
      action: 'reply',
      rcode: rcodes.notImp,
      reason: 'opcode 5',
      question: { name: 'example.com', type: 'A' },
    })
  })

  it('answers FORMERR to a query with no question or with two', () => {
    const none = inspectQuery(query({ questions: [] }))
    assert.equal(none.action, 'reply')
    assert.equal(none.rcode, rcodes.formErr)
    const two = inspectQuery(
      query({
        questions: [
          { type: 'A', name: 'example.com' },
          { type: 'A', name: 'example.org' },
        ],
      }),
    )
    assert.equal(two.action, 'reply')
    assert.equal(two.rcode, rcodes.formErr)
  })

  it('rejects a question name that is a compression pointer', () => {
    // Id 0 makes offset 0 a root label, so dns-packet decodes the pointer happily.
    const message = Buffer.from([0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x00, 0, 1, 0, 1])
    assert.equal(decode(message).questions?.[0]?.name, '.')
    assert.deepEqual(inspectQuery(message), {
      action: 'reply',
      rcode: rcodes.formErr,
      reason: 'compressed question name',
      question: undefined,
    })
  })
})

describe('buildReply', () => {
  it('keeps id, opcode and RD, sets QR and RA, and echoes the question byte for byte', () => {
    const message = query({
      questions: [{ type: 'MX', name: 'Mixed.Case.example' }],
      additionals: [opt(4096)],
    })
    const reply = buildReply(message, rcodes.refused)
    const questionEnd = 12 + 'Mixed.Case.example'.length + 2 + 4
    assert.equal(reply.length, questionEnd)
    assert.deepEqual(reply.subarray(12), message.subarray(12, questionEnd))
    const decoded = decode(reply)
    assert.equal(decoded.id, 4242)
    assert.equal(decoded.type, 'response')
    assert.equal(decoded.flag_rd, true)
    assert.equal(decoded.flag_ra, true)
    assert.equal(rcodeOf(reply), rcodes.refused)
    assert.deepEqual(decoded.questions, [{ type: 'MX', name: 'Mixed.Case.example', class: 'IN' }])
    assert.equal(decoded.additionals?.length, 0)
  })

  it('echoes a label holding a dot as the one label it is', () => {
    const message = rawQuery([Buffer.from('allowed.com')])
    const reply = buildReply(message, rcodes.refused)
    assert.deepEqual(reply.subarray(12), message.subarray(12))
  })

  it('keeps the opcode of a query it does not implement', () => {
    const reply = buildReply(withFlags(query(), 4 << 11), rcodes.notImp)
    assert.equal((reply.readUInt16BE(2) >> 11) & 0xf, 4)
    assert.equal(rcodeOf(reply), rcodes.notImp)
  })

  it('answers a query without a usable question with the header alone', () => {
    const reply = buildReply(query({ questions: [] }), rcodes.formErr)
    assert.equal(reply.length, 12)
    assert.equal(reply.readUInt16BE(4), 0)
  })

  it('is never longer than the query', () => {
    for (const message of [query(), rawQuery([]), query({ questions: [] })]) {
      assert.ok(buildReply(message, rcodes.servFail).length <= message.length)
    }
  })
})

describe('isReplyTo', () => {
  it('takes a response with the same id and nothing else', () => {
    const message = query()
    const reply = buildReply(message, rcodes.servFail)
    assert.equal(isReplyTo(reply, message), true)
    assert.equal(isReplyTo(message, message), false)
    const other = Buffer.from(reply)
    other.writeUInt16BE(4243, 0)
    assert.equal(isReplyTo(other, message), false)
    assert.equal(isReplyTo(reply.subarray(0, 11), message), false)
  })
})

describe('takeFrame', () => {
  it('splits a stream into its length-prefixed messages', () => {
    const first = query()
    const second = query({ id: 7 })
    const stream = Buffer.concat([frame(first), frame(second), Buffer.from([0])])
    const one = takeFrame(stream, maxQueryBytes)
    assert.equal(one.kind, 'message')
    assert.deepEqual(one.message, first)
    const two = takeFrame(one.rest, maxQueryBytes)
    assert.equal(two.kind, 'message')
    assert.deepEqual(two.message, second)
    assert.deepEqual(takeFrame(two.rest, maxQueryBytes), { kind: 'incomplete' })
  })

  it('waits for the rest of a message', () => {
    assert.deepEqual(takeFrame(frame(query()).subarray(0, 10), maxQueryBytes), {
      kind: 'incomplete',
    })
  })

  it('rejects an oversized length as soon as the prefix arrives', () => {
    assert.deepEqual(takeFrame(Buffer.from([0xff, 0xff]), maxQueryBytes), {
      kind: 'oversized',
      sizeBytes: 0xffff,
    })
  })
})
