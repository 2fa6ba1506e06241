import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { expandUserPath, requirePath } from './user-paths.js'

const user = { name: 'user', home: '/home/user' }

describe('expandUserPath', () => {
  it('keeps absolute paths, normalised', () => {
    assert.equal(expandUserPath('/etc//passwd', user), '/etc/passwd')
    assert.equal(expandUserPath('/a/b/../c', user), '/a/c')
  })

  it('resolves relative paths and ~ against the home', () => {
    assert.equal(expandUserPath('file.txt', user), '/home/user/file.txt')
    assert.equal(expandUserPath('~', user), '/home/user')
    assert.equal(expandUserPath('~/x/y', user), '/home/user/x/y')
    assert.equal(expandUserPath('../other', user), '/home/other')
  })

  it('uses the default workdir, else the home, for an empty path', () => {
    assert.equal(expandUserPath('', user), '/home/user')
    assert.equal(expandUserPath('', user, '/work'), '/work')
  })

  it("rejects another user's ~", () => {
    assert.throws(() => expandUserPath('~root/x', user), InvalidArgumentError)
  })

  it('rejects an empty required path naming the field', () => {
    assert.throws(() => requirePath('source', '', user), /source is required/)
  })
})
