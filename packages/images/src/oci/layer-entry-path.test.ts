import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ImageRejectedError } from '@sandcell/shared'
import { ancestorsOf, classifyWhiteout, normalizeEntryPath } from './layer-entry-path.js'

describe('normalizeEntryPath', () => {
  it('drops ./, empty components and trailing slashes', () => {
    assert.equal(normalizeEntryPath('./usr/bin/', 'layer'), 'usr/bin')
    assert.equal(normalizeEntryPath('usr//./lib', 'layer'), 'usr/lib')
    assert.equal(normalizeEntryPath('./', 'layer'), '')
    assert.equal(normalizeEntryPath('..data', 'layer'), '..data')
  })

  for (const [name, reason] of [
    ['/etc/passwd', /absolute/],
    ['../x', /'\.\.' component/],
    ['a/../../x', /'\.\.' component/],
    ['a/..', /'\.\.' component/],
    ['a\0b', /NUL/],
  ] as const) {
    it(`rejects ${JSON.stringify(name)}`, () => {
      assert.throws(
        () => normalizeEntryPath(name, 'layer 1/1'),
        (err: Error) =>
          err instanceof ImageRejectedError &&
          err.message.startsWith('layer 1/1: entry ') &&
          reason.test(err.message),
      )
    })
  }
})

describe('classifyWhiteout', () => {
  it('reads whiteouts, opaque markers and AUFS metadata', () => {
    assert.deepEqual(classifyWhiteout('etc/.wh.passwd', 'l'), {
      kind: 'whiteout',
      target: 'etc/passwd',
    })
    assert.deepEqual(classifyWhiteout('.wh.tmp', 'l'), { kind: 'whiteout', target: 'tmp' })
    assert.deepEqual(classifyWhiteout('var/cache/.wh..wh..opq', 'l'), {
      kind: 'opaque',
      dir: 'var/cache',
    })
    assert.deepEqual(classifyWhiteout('.wh..wh..opq', 'l'), { kind: 'opaque', dir: '' })
    assert.deepEqual(classifyWhiteout('.wh..wh.plnk', 'l'), { kind: 'metadata' })
    assert.equal(classifyWhiteout('etc/passwd', 'l'), undefined)
    assert.equal(classifyWhiteout('etc/x.wh.y', 'l'), undefined)
  })

  it('rejects a whiteout of nothing, . or ..', () => {
    for (const path of ['a/.wh.', 'a/.wh..', 'a/.wh...']) {
      assert.throws(() => classifyWhiteout(path, 'l'), ImageRejectedError, path)
    }
  })
})

describe('ancestorsOf', () => {
  it('lists parents outermost first', () => {
    assert.deepEqual(ancestorsOf('a/b/c'), ['a', 'a/b'])
    assert.deepEqual(ancestorsOf('a'), [])
  })
})
