/** Finding the compressed kernel inside a bzImage. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { compressionMagic, findCompressedPayloads, isElf } from './vmlinux.js'

describe('vmlinux', () => {
  it('finds compressed payloads by magic, LZ4 first', () => {
    const image = Buffer.concat([
      Buffer.alloc(10),
      compressionMagic.gzip,
      Buffer.alloc(5),
      compressionMagic.lz4,
      Buffer.alloc(3),
    ])
    assert.deepEqual(findCompressedPayloads(image), [
      { format: 'lz4', offset: 18 },
      { format: 'gzip', offset: 10 },
    ])
    assert.equal(isElf(Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2])), true)
    assert.equal(isElf(Buffer.from('MZ')), false)
  })
})
