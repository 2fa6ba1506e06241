import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { UnauthenticatedError } from '@sandcell/shared'
import { authorizeFileAccess, fileSignature } from './signature.js'

const token = 'secret-token'
const query = (params: Record<string, string>) => new URLSearchParams(params)

describe('fileSignature', () => {
  it("matches the e2b SDK's v1 signature", () => {
    const raw = '/home/user/a.txt:read:user:secret-token'
    const expected = `v1_${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`
    assert.equal(fileSignature('/home/user/a.txt', 'read', 'user', token), expected)
    assert.ok(!fileSignature('/x', 'write', '', token, 1700000000).endsWith('='))
    assert.notEqual(
      fileSignature('/x', 'write', '', token, 1),
      fileSignature('/x', 'write', '', token, 2),
    )
  })
})

describe('authorizeFileAccess', () => {
  const check = (
    params: Record<string, string>,
    extra: { tokenHeader?: string; operation?: 'read' | 'write' } = {},
  ) =>
    authorizeFileAccess({
      accessToken: token,
      tokenHeader: extra.tokenHeader,
      query: query(params),
      operation: extra.operation ?? 'read',
      nowSeconds: 1000,
    })

  it('lets everything through when no token is set', () => {
    authorizeFileAccess({
      accessToken: undefined,
      tokenHeader: undefined,
      query: query({}),
      operation: 'read',
    })
  })

  it('accepts the token header and rejects a wrong one even with a valid signature', () => {
    check({}, { tokenHeader: token })
    assert.throws(
      () =>
        check(
          { path: '/x', signature: fileSignature('/x', 'read', '', token) },
          { tokenHeader: 'nope' },
        ),
      UnauthenticatedError,
    )
  })

  it('accepts a valid, unexpired signature', () => {
    check({ path: '/x', signature: fileSignature('/x', 'read', '', token) })
    check({
      path: '/x',
      username: 'user',
      signature: fileSignature('/x', 'read', 'user', token, 2000),
      signature_expiration: '2000',
    })
  })

  it('rejects a missing, wrong, other-operation or expired signature', () => {
    assert.throws(() => check({ path: '/x' }), /missing signature/)
    assert.throws(() => check({ path: '/x', signature: 'v1_forged' }), /invalid signature/)
    assert.throws(
      () => check({ path: '/x', signature: fileSignature('/x', 'write', '', token) }),
      /invalid signature/,
    )
    assert.throws(
      () =>
        check({
          path: '/x',
          signature: fileSignature('/x', 'read', '', token, 999),
          signature_expiration: '999',
        }),
      /expired/,
    )
    assert.throws(
      () =>
        check({
          path: '/x',
          signature: fileSignature('/x', 'read', '', token),
          signature_expiration: 'soon',
        }),
      /unix seconds/,
    )
  })
})
