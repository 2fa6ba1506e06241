/** Content digests (`sha256:<hex>`) as OCI uses them: checked, hashed and turned into file names. */
import { createHash } from 'node:crypto'
import { ImageRejectedError } from '@sandcell/shared'

const sha256Pattern = /^sha256:[a-f0-9]{64}$/

/** Whether `value` is a `sha256:<64 hex>` digest, the only algorithm registries use in practice. */
export function isSha256Digest(value: string): boolean {
  return sha256Pattern.test(value)
}

/**
 * The hex part of a sha256 digest, safe as a file name.
 * @throws ImageRejectedError naming `what` when it is not a sha256 digest
 */
export function digestHex(digest: string, what: string): string {
  if (!isSha256Digest(digest)) {
    throw new ImageRejectedError(
      `${what} has the digest ${JSON.stringify(digest.slice(0, 80))}; only sha256:<64 hex digits> is supported`,
      { details: { digest: digest.slice(0, 80) } },
    )
  }
  return digest.slice('sha256:'.length)
}

/** `sha256:<hex>` of some bytes. */
export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/**
 * The chain IDs of a layer stack (OCI image spec): the first is the first diffID, each next one
 * `sha256(previous + ' ' + diffID)`. The last names the whole stack's merged root filesystem.
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const chain: string[] = []
  for (const diffId of diffIds) {
    const previous = chain.at(-1)
    chain.push(previous === undefined ? diffId : sha256Digest(`${previous} ${diffId}`))
  }
  return chain
}
