import assert from 'node:assert/strict'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { describe, it } from 'node:test'
import { tapChunks } from './tap-chunks.js'

function sink(into: Buffer[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      into.push(chunk)
      done()
    },
  })
}

describe('tapChunks', () => {
  it('shows every chunk, then passes it on unchanged', async () => {
    const seen: string[] = []
    const out: Buffer[] = []
    await pipeline(
      Readable.from([Buffer.from('ab'), Buffer.from('cd')]),
      tapChunks((chunk) => seen.push(chunk.toString())),
      sink(out),
    )
    assert.deepEqual(seen, ['ab', 'cd'])
    assert.equal(Buffer.concat(out).toString(), 'abcd')
  })

  it('fails the stream with what the callback throws, passing nothing after it', async () => {
    const out: Buffer[] = []
    let bytes = 0
    await assert.rejects(
      pipeline(
        Readable.from([Buffer.from('12345'), Buffer.from('67890')]),
        tapChunks((chunk) => {
          bytes += chunk.length
          if (bytes > 6) {
            throw new RangeError('over 6 bytes')
          }
        }),
        sink(out),
      ),
      RangeError,
    )
    assert.equal(Buffer.concat(out).toString(), '12345')
  })
})
