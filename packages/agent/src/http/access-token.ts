/** The access-token check every route but /health goes through once a token is set. */
import type * as Crypto from 'node:crypto'
import { createRequire } from 'node:module'

/** envd's 401 message when a request lacks a valid token. */
export const unauthorizedMessage =
  'unauthorized access, please provide a valid access token or method signing if supported'

let crypto: typeof Crypto | undefined

/** node:crypto on first use: loading it costs ~4 ms, and nothing needs it before the first request. */
function loadCrypto(): typeof Crypto {
  crypto ??= createRequire(import.meta.url)('node:crypto') as typeof Crypto
  return crypto
}

/**
 * Compares two secrets in constant time (their SHA-256 digests, so lengths do not leak either).
 */
export function secretsEqual(expected: string, provided: string): boolean {
  const { createHash, timingSafeEqual } = loadCrypto()
  const a = createHash('sha256').update(expected).digest()
  const b = createHash('sha256').update(provided).digest()
  return timingSafeEqual(a, b)
}

/** True when no token is required, or `header` carries the required one. */
export function isAuthorized(accessToken: string | undefined, header: string | undefined): boolean {
  return accessToken === undefined || (header !== undefined && secretsEqual(accessToken, header))
}
