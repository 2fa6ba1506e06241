import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { parseServerUrl } from './http.js'

describe('server URL', () => {
  it('keeps a path prefix as the base of every request', () => {
    assert.equal(parseServerUrl('http://host:3000').href, 'http://host:3000/')
    assert.equal(parseServerUrl('https://host/sandcell?x=1').href, 'https://host/sandcell/')
    assert.equal(
      new URL('v2/sandboxes', parseServerUrl('https://h/p')).href,
      'https://h/p/v2/sandboxes',
    )
  })

  it('rejects what is not an http(s) URL, quoting it', () => {
    assert.throws(() => parseServerUrl('localhost:3000'), InvalidArgumentError)
    assert.throws(() => parseServerUrl('nope'), /"nope" is not a URL/)
  })
})
