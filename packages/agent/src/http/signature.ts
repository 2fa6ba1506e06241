/** The agent's check of signed file URLs: envd's `signature` / `signature_expiration` parameters. */
import { fileSignature, type FileOperation } from '@sandcell/protocol'
import { UnauthenticatedError } from '@sandcell/shared'
import { secretsEqual } from './access-token.js'

/** The request facts a file route is authorized by. */
export interface FileAccessRequest {
  accessToken: string | undefined
  /** The `X-Access-Token` header, if any. */
  tokenHeader: string | undefined
  query: URLSearchParams
  operation: FileOperation
  /** Current time in unix seconds (for expiry; injectable for tests). */
  nowSeconds?: number
}

/**
 * Authorizes a /files request like envd: no token set → open; a token header must match; else a
 * valid, unexpired signature over the raw `path` and `username` query values is required.
 * @throws UnauthenticatedError (401) saying what is wrong.
 */
export function authorizeFileAccess(request: FileAccessRequest): void {
  const { accessToken, tokenHeader, query } = request
  if (accessToken === undefined) {
    return
  }
  if (tokenHeader !== undefined && tokenHeader !== '') {
    if (!secretsEqual(accessToken, tokenHeader)) {
      throw new UnauthenticatedError('access token present in header but does not match')
    }
    return
  }
  const signature = query.get('signature')
  if (signature === null) {
    throw new UnauthenticatedError('missing signature query parameter (or X-Access-Token header)')
  }
  const expirationText = query.get('signature_expiration')
  let expiration: number | undefined
  if (expirationText !== null) {
    expiration = Number(expirationText)
    if (!/^\d+$/.test(expirationText) || !Number.isSafeInteger(expiration)) {
      throw new UnauthenticatedError('signature_expiration must be unix seconds')
    }
  }
  const expected = fileSignature(
    query.get('path') ?? '',
    request.operation,
    query.get('username') ?? '',
    accessToken,
    expiration,
  )
  if (!secretsEqual(expected, signature)) {
    throw new UnauthenticatedError('invalid signature')
  }
  const now = request.nowSeconds ?? Math.floor(Date.now() / 1000)
  if (expiration !== undefined && expiration < now) {
    throw new UnauthenticatedError('signature is already expired')
  }
}
