import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { parseUpstream, parseUpstreams } from './parse-upstream.js'

describe('parseUpstream', () => {
  it('takes port 53 when none is given', () => {
    assert.deepEqual(parseUpstream('10.0.0.2'), {
      host: '10.0.0.2',
      port: 53,
      label: '10.0.0.2:53',
    })
  })

  it('takes an explicit port', () => {
    assert.deepEqual(parseUpstream('127.0.0.53:5353'), {
      host: '127.0.0.53',
      port: 5353,
      label: '127.0.0.53:5353',
    })
  })

  it('rejects host names, IPv6, bad ports and trailing junk', () => {
    for (const text of [
      'dns.google',
      '::1',
      '1.1.1.1:0',
      '1.1.1.1:65536',
      '1.1.1.1:',
      '1.1.1.1:53x',
      '1.1.1.1:53:53',
      '1.1.1.256',
      '',
    ]) {
      assert.throws(() => parseUpstream(text), InvalidArgumentError, text)
    }
  })
})

describe('parseUpstreams', () => {
  it('rejects an empty list', () => {
    assert.throws(() => parseUpstreams([]), InvalidArgumentError)
  })
})
