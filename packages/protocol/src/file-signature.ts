/** envd's signed `/files` URLs: the v1 signature the agent checks and the proxy matches. */
import { createHash } from 'node:crypto'

/** Which way a signed URL may be used: GET reads, POST writes. */
export type FileOperation = 'read' | 'write'

/** Length of every v1 signature: `v1_` + unpadded base64 of a SHA-256 digest. */
export const fileSignatureLength = 3 + 43

/**
 * envd's v1 signature (the e2b SDK's `getSignature`):
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
  const parts = [path, operation, user, accessToken]
  if (expiration !== undefined) {
    parts.push(String(expiration))
  }
  const digest = createHash('sha256').update(parts.join(':')).digest('base64')
  return `v1_${digest.replace(/=+$/, '')}`
}
