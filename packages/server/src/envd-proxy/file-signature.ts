/** envd's signed `/files` URLs, from the proxy's side: which sandbox's token made a signature. */
import { timingSafeEqual } from 'node:crypto'
import { fileSignature, fileSignatureLength, type FileOperation } from '@sandcell/protocol'
import type { ProxyTarget } from './proxy-target.js'

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
  if (provided.length !== fileSignatureLength) {
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
