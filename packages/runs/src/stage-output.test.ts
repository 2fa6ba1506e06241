import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { StageOutput } from './stage-output.js'

describe('StageOutput', () => {
  it('keeps both streams and their interleaving', () => {
    const output = new StageOutput(100, () => assert.fail('no cap reached'))
    output.push('stdout', Buffer.from('a'))
    output.push('stderr', Buffer.from('b'))
    output.push('stdout', Buffer.from('c'))
    assert.deepEqual(output.finish(), {
      stdout: 'ac',
      stderr: 'b',
      output: 'abc',
      exceeded: undefined,
    })
  })

  it('keeps a character split across chunks whole', () => {
    const output = new StageOutput(100, () => undefined)
    const bytes = Buffer.from('é€😀')
    for (const byte of bytes) {
      output.push('stdout', Buffer.from([byte]))
    }
    assert.equal(output.finish().stdout, 'é€😀')
  })

  it('stops a stream at exactly the cap and reports it once', () => {
    const reached: string[] = []
    const output = new StageOutput(5, (stream) => reached.push(stream))
    assert.equal(output.push('stdout', Buffer.from('abc')), 'abc')
    assert.equal(output.push('stdout', Buffer.from('defg')), 'de')
    assert.equal(output.push('stdout', Buffer.from('h')), '')
    assert.equal(output.push('stderr', Buffer.from('123456')), '12345')
    const result = output.finish()
    assert.equal(result.stdout, 'abcde')
    assert.equal(result.stderr, '12345')
    assert.equal(result.output, 'abcde12345')
    assert.equal(result.exceeded, 'stdout')
    assert.deepEqual(reached, ['stdout'])
  })

  it('does not report output of exactly the cap', () => {
    const output = new StageOutput(3, () => assert.fail('exactly the cap is allowed'))
    output.push('stdout', Buffer.from('abc'))
    assert.equal(output.finish().exceeded, undefined)
  })

  it('never ends on half a surrogate pair', () => {
    const output = new StageOutput(2, () => undefined)
    output.push('stdout', Buffer.from('a😀'))
    assert.equal(output.finish().stdout, 'a')
  })

  it('flushes an incomplete character at the end as U+FFFD', () => {
    const output = new StageOutput(10, () => undefined)
    output.push('stdout', Buffer.from([0x61, 0xe2, 0x82]))
    assert.equal(output.finish().stdout, 'a\ufffd')
  })
})
