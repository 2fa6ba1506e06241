// The names the egress proxy hands to a sandbox's policy, and the ones it refuses outright.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { normalizeEgressName } from './egress-name.js'

describe('normalizeEgressName', () => {
  it('lowercases and drops one trailing dot', () => {
    assert.equal(normalizeEgressName('Allowed.TEST'), 'allowed.test')
    assert.equal(normalizeEgressName('a-b.allowed.test.'), 'a-b.allowed.test')
    assert.equal(normalizeEgressName('xn--bcher-kva.example'), 'xn--bcher-kva.example')
  })

  it('rejects IP literals in every form a resolver reads as an address', () => {
    for (const raw of [
      '127.0.0.1',
      '10.0.0.1.',
      '127.1',
      '2130706433',
      '0x7f000001',
      '0x7f.0.0.1',
      'a.0x10',
    ]) {
      assert.equal(normalizeEgressName(raw), undefined, raw)
    }
    assert.equal(normalizeEgressName('1.example.com'), '1.example.com')
  })

  it('rejects characters outside letters, digits, dots and hyphens, before lowercasing', () => {
    // U+212A KELVIN SIGN lowercases to an ASCII k.
    for (const raw of [
      '\u212Aallowed.test',
      'allowed.test\0.evil',
      'a_b.test',
      'a b.test',
      '*.allowed.test',
      'allowed.test:443',
      '[::1]',
    ]) {
      assert.equal(normalizeEgressName(raw), undefined, JSON.stringify(raw))
    }
  })

  it('rejects malformed labels, a single label and overlong names', () => {
    for (const raw of [
      '',
      '.',
      'allowed..test',
      '.allowed.test',
      'allowed.test..',
      '-a.test',
      'a-.test',
      'localhost',
      `${'a'.repeat(64)}.test`,
      `${'a.'.repeat(127)}test`,
    ]) {
      assert.equal(normalizeEgressName(raw), undefined, JSON.stringify(raw))
    }
  })
})
