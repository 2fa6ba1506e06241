/** envd's signed `/files` URLs, from the proxy's side: which sandbox's token made a signature. */
import { createHash, timingSafeEqual } from 'node:crypto'
import type { ProxyTarget } from './proxy-target.js'

/** Which way a signed URL may be used: GET reads, POST writes (as envd decides it). */
export type FileOperation = 'read' | 'write'

/** Length of every v1 signature: `v1_` + unpadded base64 of a SHA-256 digest. */
const signatureLength = 3 + 43

/**
 * envd's v1 signature (the same algorithm as the agent's and the e2b SDK's `getSignature`):
 * `v1_` + base64(sha256("<path>:<op>:<user>:<token>[:<expiration>]")) without trailing `=`.
 * `user` is "" when the URL names none; `expiration` is unix seconds.
 */
export function fileSignature(
  path: string,
  operation: FileOperation,
  user: string,
  accessToken: string,
  expiration?: number,
): string {
  const text =
    expiration === undefined
      ? `${path}:${operation}:${user}:${accessToken}`
      : `${path}:${operation}:${user}:${accessToken}:${expiration}`
  return `v1_${createHash('sha256').update(text).digest('base64').replace(/=+$/, '')}`
}

/** The outcome of matching a signed URL against every sandbox. */
export type SignatureMatch =
  { kind: 'match'; target: ProxyTarget } | { kind: 'invalid'; message: string }

/**
 * Finds the sandbox whose envd access token makes `query`'s `signature` valid for `operation`,
 * reading `path`, `username` and `signature_expiration` exactly as the agent does. Sandboxes
 * without a token are skipped (their envd needs no signature). Compares in constant time; does
 * not check expiry (the agent does, and answers 401 with envd's message).
 */
export function findSignedSandbox(
  targets: Iterable<ProxyTarget>,
  query: URLSearchParams,
  operation: FileOperation,
): SignatureMatch {
  const provided = Buffer.from(query.get('signature') ?? '', 'utf8')
  if (provided.length !== signatureLength) {
    return { kind: 'invalid', message: 'invalid signature' }
  }
  const expirationText = query.get('signature_expiration')
  let expiration: number | undefined
  if (expirationText !== null) {
    expiration = Number(expirationText)
    if (!/^\d+$/.test(expirationText) || !Number.isSafeInteger(expiration)) {
      return { kind: 'invalid', message: 'signature_expiration must be unix seconds' }
    }
  }
  const path = query.get('path') ?? ''
  const user = query.get('username') ?? ''
  for (const target of targets) {
    if (target.envdAccessToken === '') {
      continue
    }
    const expected = Buffer.from(
      fileSignature(path, operation, user, target.envdAccessToken, expiration),
      'utf8',
    )
    if (expected.length === provided.length && timingSafeEqual(expected, provided)) {
      return { kind: 'match', target }
    }
  }
  return { kind: 'invalid', message: 'invalid signature: it was not made by any sandbox' }
}
