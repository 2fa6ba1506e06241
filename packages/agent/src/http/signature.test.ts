import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { fileSignature } from '@sandcell/protocol'
import { UnauthenticatedError } from '@sandcell/shared'
import { authorizeFileAccess } from './signature.js'

const token = 'secret-token'
const query = (params: Record<string, string>) => new URLSearchParams(params)

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
