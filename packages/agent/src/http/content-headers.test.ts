import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { chooseEncoding, contentDisposition, contentTypeFor } from './content-headers.js'

describe('chooseEncoding', () => {
  it('serves identity without Accept-Encoding or when gzip is not offered', () => {
    assert.equal(chooseEncoding(undefined), '')
    assert.equal(chooseEncoding('br'), '')
    assert.equal(chooseEncoding('identity, gzip;q=0.5'), '')
  })

  it('serves gzip when acceptable, as undici asks by default', () => {
    assert.equal(chooseEncoding('gzip, deflate'), 'gzip')
    assert.equal(chooseEncoding('GZIP;q=0.8'), 'gzip')
    assert.equal(chooseEncoding('*;q=1, identity;q=0'), 'gzip')
  })

  it('rejects a request that refuses every encoding we have', () => {
    assert.throws(() => chooseEncoding('identity;q=0, br'), InvalidArgumentError)
  })
})

describe('content headers', () => {
  it('types files by extension', () => {
    assert.equal(contentTypeFor('a.TXT'), 'text/plain; charset=utf-8')
    assert.equal(contentTypeFor('x.png'), 'image/png')
    assert.equal(contentTypeFor('noext'), 'application/octet-stream')
  })

  it('builds an attachment disposition with an ASCII fallback and the UTF-8 name', () => {
    assert.equal(
      contentDisposition('a b.txt'),
      `attachment; filename="a b.txt"; filename*=UTF-8''a%20b.txt`,
    )
    assert.equal(
      contentDisposition('ü"x.txt'),
      `attachment; filename="__x.txt"; filename*=UTF-8''%C3%BC%22x.txt`,
    )
  })
})
