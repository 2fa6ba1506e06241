import assert from 'node:assert/strict'
import { closeSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { nativeAddon } from '../native-addon.js'
import {
  maxMetadataKeyBytes,
  maxMetadataTotalBytes,
  metadataFromHeaders,
  readMetadata,
  replaceMetadata,
  validateMetadata,
} from './file-metadata.js'

const EPERM = -1

describe('metadataFromHeaders', () => {
  it('takes every X-Metadata- header, lowercased, with its first value', () => {
    assert.deepEqual(
      metadataFromHeaders({
        'x-metadata-owner': ['alice', 'bob'],
        'x-metadata-Stage': ['draft'],
        'content-type': ['text/plain'],
        'x-metadata-': ['no key'],
      }),
      { owner: 'alice', stage: 'draft' },
    )
  })

  it('keeps __proto__ as an ordinary key', () => {
    const metadata = metadataFromHeaders({ 'x-metadata-__proto__': ['polluted'] })
    assert.deepEqual(Object.keys(metadata), ['__proto__'])
    assert.equal(Object.getPrototypeOf(metadata), Object.prototype)
  })
})

describe('validateMetadata', () => {
  it('accepts keys and values up to the limits', () => {
    validateMetadata({})
    validateMetadata({ ['k'.repeat(maxMetadataKeyBytes)]: 'v' })
    validateMetadata({ a: 'x'.repeat(maxMetadataTotalBytes - 'user.e2b.a'.length) })
    validateMetadata({ 'mixed-Case_key.1': ' printable ~!@#$%^&*()' })
  })

  it('rejects a key longer than an xattr name may be', () => {
    assert.throws(
      () => validateMetadata({ ['k'.repeat(maxMetadataKeyBytes + 1)]: 'v' }),
      InvalidArgumentError,
    )
  })

  it('rejects metadata larger than 4096 bytes in all', () => {
    assert.throws(
      () => validateMetadata({ a: 'x'.repeat(maxMetadataTotalBytes - 'user.e2b.a'.length + 1) }),
      /at most 4096/,
    )
    const many = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`key${i}`, 'v']))
    assert.throws(() => validateMetadata(many), InvalidArgumentError)
  })

  it('rejects keys and values that are not printable US-ASCII', () => {
    for (const bad of ['é', 'line\nbreak', 'tab\t', '\x7f', '\0', '\u{1f600}']) {
      assert.throws(() => validateMetadata({ [bad]: 'v' }), InvalidArgumentError, bad)
      assert.throws(() => validateMetadata({ key: bad }), InvalidArgumentError, bad)
    }
    assert.throws(() => validateMetadata({ '': 'v' }), /must not be empty/)
  })
})

describe('file metadata on disk', () => {
  let dir: string
  let file: string

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-metadata-'))
    file = join(dir, 'file.txt')
    writeFileSync(file, 'content')
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  const withFd = <T>(path: string, step: (fd: number) => T): T => {
    const fd = openSync(path, 'r+')
    try {
      return step(fd)
    } finally {
      closeSync(fd)
    }
  }

  it('replaces the whole set and reads it back by path and by fd', () => {
    withFd(file, (fd) => replaceMetadata(fd, { a: '1', b: '2' }))
    assert.deepEqual(readMetadata(file), { a: '1', b: '2' })
    withFd(file, (fd) => replaceMetadata(fd, { b: 'two', c: '' }))
    assert.deepEqual(readMetadata(file), { b: 'two', c: '' })
    assert.deepEqual(
      withFd(file, (fd) => readMetadata(fd)),
      { b: 'two', c: '' },
    )
    withFd(file, (fd) => replaceMetadata(fd, {}))
    assert.equal(readMetadata(file), undefined)
  })

  it('shows user.e2b.* attributes set by others and ignores other user.* ones', () => {
    const addon = nativeAddon()
    assert.equal(addon.xattrSet(file, 'user.e2b.external', Buffer.from('set inside')), 0)
    assert.equal(addon.xattrSet(file, 'user.mime_type', Buffer.from('text/plain')), 0)
    assert.deepEqual(readMetadata(file), { external: 'set inside' })
    // A replace leaves attributes outside the metadata namespace alone.
    withFd(file, (fd) => replaceMetadata(fd, {}))
    assert.deepEqual(addon.xattrGet(file, 'user.mime_type'), Buffer.from('text/plain'))
  })

  it('leaves out a key or value that is not UTF-8 and keeps the rest', () => {
    const addon = nativeAddon()
    withFd(file, (fd) => replaceMetadata(fd, { good: 'yes' }))
    assert.equal(addon.xattrSet(file, 'user.e2b.badvalue', Buffer.from([0xff, 0xfe])), 0)
    assert.equal(
      addon.xattrSet(file, `user.e2b.bad${String.fromCharCode(0xff)}key`, Buffer.from('v')),
      0,
    )
    assert.deepEqual(readMetadata(file), { good: 'yes' })
    withFd(file, (fd) => replaceMetadata(fd, {}))
    assert.equal(readMetadata(file), undefined)
  })

  it('reads UTF-8 set from inside the sandbox as it is', () => {
    assert.equal(nativeAddon().xattrSet(file, 'user.e2b.emoji', Buffer.from('é \u{1f600}')), 0)
    assert.deepEqual(readMetadata(file), { emoji: 'é \u{1f600}' })
    withFd(file, (fd) => replaceMetadata(fd, {}))
  })

  it('rejects metadata over the limits before writing anything', () => {
    withFd(file, (fd) => replaceMetadata(fd, { kept: '1' }))
    assert.throws(
      () => withFd(file, (fd) => replaceMetadata(fd, { big: 'x'.repeat(5000) })),
      InvalidArgumentError,
    )
    assert.deepEqual(readMetadata(file), { kept: '1' })
    withFd(file, (fd) => replaceMetadata(fd, {}))
  })

  it('cannot set, read or remove trusted.*, security.* or system.* attributes', () => {
    // The agent runs as root, which the kernel would let write trusted.*: the addon refuses.
    const addon = nativeAddon()
    for (const name of [
      'trusted.overlay.opaque',
      'security.capability',
      'system.posix_acl_access',
    ]) {
      assert.equal(addon.xattrSet(file, name, Buffer.from('y')), EPERM, name)
      assert.equal(
        withFd(file, (fd) => addon.xattrSet(fd, name, Buffer.from('y'))),
        EPERM,
        name,
      )
      assert.equal(addon.xattrGet(file, name), EPERM, name)
      assert.equal(addon.xattrRemove(file, name), EPERM, name)
    }
    const names = addon.xattrList(file)
    assert.ok(Array.isArray(names))
    assert.deepEqual(
      names.filter((name) => !name.startsWith('user.')),
      [],
    )
  })

  it('cannot reach a symlink target through the link', () => {
    const addon = nativeAddon()
    const target = join(dir, 'target.txt')
    const link = join(dir, 'link')
    writeFileSync(target, 'target')
    symlinkSync(target, link)
    withFd(target, (fd) => replaceMetadata(fd, { secret: 'value' }))
    assert.equal(readMetadata(link), undefined)
    assert.equal(addon.xattrGet(link, 'user.e2b.secret'), null)
    // Linux refuses user.* attributes on a link itself; the target is not touched either.
    assert.equal(addon.xattrSet(link, 'user.e2b.secret', Buffer.from('changed')), EPERM)
    assert.equal(addon.xattrRemove(link, 'user.e2b.secret'), EPERM)
    assert.deepEqual(readMetadata(target), { secret: 'value' })
  })

  it('answers errors as negative errno values, never by throwing', () => {
    const addon = nativeAddon()
    assert.equal(addon.xattrList(join(dir, 'missing')), -2) // ENOENT
    assert.equal(addon.xattrList(-1), -9) // EBADF
    assert.equal(addon.xattrSet(file, `user.${'x'.repeat(300)}`, Buffer.from('v')), -34) // ERANGE
    assert.equal(addon.xattrSet(file, 'user.nul\0name', Buffer.from('v')), -22) // EINVAL
    assert.equal(addon.xattrList(`${file}\0suffix`), -22)
    assert.equal(readMetadata(join(dir, 'missing')), undefined)
  })
})
