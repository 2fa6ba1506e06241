import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { InvalidArgumentError, PathEscapeError } from '@sandcell/shared'
import { resolveInside } from './resolve-inside.js'

describe('resolveInside', () => {
  let root: string

  before(() => {
    root = join(realpathSync(mkdtempSync(join(tmpdir(), 'resolve-inside-'))), 'root')
    mkdirSync(join(root, 'home/user/dir'), { recursive: true })
    mkdirSync(join(root, 'etc'))
    writeFileSync(join(root, 'etc/passwd'), 'sandbox passwd')
    writeFileSync(join(root, 'home/user/file.txt'), 'x')
    symlinkSync('/etc', join(root, 'home/user/abs-etc'))
    symlinkSync('dir', join(root, 'home/user/rel-dir'))
    symlinkSync('../../../..', join(root, 'home/user/up-and-out'))
    symlinkSync('../../../../../etc/passwd', join(root, 'home/user/relative-out'))
    symlinkSync('hop2', join(root, 'home/user/hop1'))
    symlinkSync('/home/user/hop3', join(root, 'home/user/hop2'))
    symlinkSync('../../../../etc', join(root, 'home/user/hop3'))
    symlinkSync('loop-b', join(root, 'home/user/loop-a'))
    symlinkSync('loop-a', join(root, 'home/user/loop-b'))
    symlinkSync('/home/user/file.txt', join(root, 'home/user/final-link'))
  })
  after(() => rmSync(join(root, '..'), { recursive: true, force: true }))

  it('maps a plain sandbox path into the root', () => {
    assert.deepEqual(resolveInside(root, '/home/user/file.txt'), {
      hostPath: join(root, 'home/user/file.txt'),
      sandboxPath: '/home/user/file.txt',
    })
    assert.deepEqual(resolveInside(root, '/'), { hostPath: root, sandboxPath: '/' })
  })

  it('keeps missing components as written so they can be created', () => {
    assert.equal(
      resolveInside(root, '/home/user/new/deep/file').sandboxPath,
      '/home/user/new/deep/file',
    )
    assert.equal(resolveInside(root, '/home/user/new/../other').sandboxPath, '/home/user/other')
  })

  it('follows a relative symlink inside the root', () => {
    assert.equal(resolveInside(root, '/home/user/rel-dir/x').sandboxPath, '/home/user/dir/x')
  })

  it('does not follow a final symlink when asked not to', () => {
    assert.equal(
      resolveInside(root, '/home/user/final-link', { followFinal: false }).sandboxPath,
      '/home/user/final-link',
    )
    assert.equal(resolveInside(root, '/home/user/final-link').sandboxPath, '/home/user/file.txt')
  })

  it('cannot reach outside through an absolute symlink: the target is re-rooted', () => {
    const resolved = resolveInside(root, '/home/user/abs-etc/passwd')
    assert.equal(resolved.sandboxPath, '/etc/passwd')
    assert.equal(resolved.hostPath, join(root, 'etc/passwd'))
  })

  it('rejects .. that climbs above the root', () => {
    assert.throws(() => resolveInside(root, '/../etc/passwd'), PathEscapeError)
    assert.throws(() => resolveInside(root, '/home/../../etc'), PathEscapeError)
  })

  it('clamps .. at / when the root is / (POSIX)', () => {
    assert.equal(resolveInside('/', '/../..').sandboxPath, '/')
  })

  it('rejects a relative symlink that climbs out of the root', () => {
    assert.throws(() => resolveInside(root, '/home/user/relative-out'), PathEscapeError)
    assert.throws(() => resolveInside(root, '/home/user/up-and-out/etc'), PathEscapeError)
  })

  it('rejects a chain of symlinks that ends outside the root', () => {
    assert.throws(() => resolveInside(root, '/home/user/hop1/passwd'), PathEscapeError)
  })

  it('shows each symlink to beforeFollow before following it, which may refuse it', () => {
    const seen: string[] = []
    for (const path of ['/home/user/abs-etc/passwd', '/home/user/rel-dir/x']) {
      resolveInside(root, path, { beforeFollow: (link) => seen.push(link.sandboxPath) })
    }
    assert.deepEqual(seen, ['/home/user/abs-etc', '/home/user/rel-dir'])
    assert.throws(
      () =>
        resolveInside(root, '/home/user/rel-dir/x', {
          beforeFollow: () => {
            throw new InvalidArgumentError('refused')
          },
        }),
      /refused/,
    )
    assert.equal(
      resolveInside(root, '/home/user/final-link', {
        followFinal: false,
        beforeFollow: () => assert.fail('a final link that is not followed is not shown'),
      }).sandboxPath,
      '/home/user/final-link',
    )
  })

  it('rejects a symlink loop', () => {
    assert.throws(
      () => resolveInside(root, '/home/user/loop-a'),
      (err: unknown) => err instanceof InvalidArgumentError && /symbolic links/.test(err.message),
    )
  })

  it('rejects a NUL byte', () => {
    assert.throws(() => resolveInside(root, '/home/user/file.txt\0.png'), InvalidArgumentError)
  })

  it('reports the escape as permission denied (403)', () => {
    try {
      resolveInside(root, '/home/user/relative-out')
      assert.fail('expected an escape error')
    } catch (err) {
      assert.ok(err instanceof PathEscapeError)
      assert.equal(err.status, 403)
      assert.equal(err.rpcCode, 'permission_denied')
    }
  })
})
