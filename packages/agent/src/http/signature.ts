/** Signed file URLs: envd's `signature` / `signature_expiration` query parameters. */
import { createHash } from 'node:crypto'
import { UnauthenticatedError } from '@sandcell/shared'
import { secretsEqual } from './access-token.js'

/** Which way a signed URL may be used. */
export type FileOperation = 'read' | 'write'

/**
 * envd's v1 signature: `v1_` + base64(sha256("<path>:<op>:<user>:<token>[:<expiration>]")) with
 * the trailing `=` removed. `user` is "" when the URL names none.
 */
export function fileSignature(
  path: string,
  operation: FileOperation,
  user: string,
  accessToken: string,
  expiration?: number,
): string {
  const parts = [path, operation, user, accessToken]
  if (expiration !== undefined) {
    parts.push(String(expiration))
  }
  const digest = createHash('sha256').update(parts.join(':')).digest('base64')
  return `v1_${digest.replace(/=+$/, '')}`
}

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
