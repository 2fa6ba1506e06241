/**
 * Content-addressed blobs (`<store>/blobs/sha256/<hex>`): manifests, configs and compressed
 * layers, each written once through a temporary file, verified while it streams in.
 */
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { ImageRejectedError } from '@sandcell/shared'
import { digestHex, sha256Digest } from './digest.js'
import { tempName } from './store-temp.js'

export class BlobStore {
  readonly dir: string

  /** `dir` is `<store>/blobs/sha256`; it is created when missing. */
  constructor(dir: string) {
    this.dir = dir
    mkdirSync(dir, { recursive: true, mode: 0o700 })
  }

  path(digest: string): string {
    return join(this.dir, digestHex(digest, 'a blob'))
  }

  /**
   * The path of a stored blob, when there is one of the expected size (a torn file from a
   * crash before the data reached the disk is removed here).
   */
  find(digest: string, sizeBytes?: number): string | undefined {
    const path = this.path(digest)
    let size: number
    try {
      size = statSync(path).size
    } catch {
      return undefined
    }
    if (sizeBytes !== undefined && size !== sizeBytes) {
      rmSync(path, { force: true })
      return undefined
    }
    return path
  }

  /**
   * A small stored blob (manifest, config), hashed again on read: it is parsed, and a few KiB
   * cost nothing to check. Undefined when absent or damaged (then it is removed).
   */
  readSmall(digest: string): Buffer | undefined {
    const path = this.path(digest)
    let bytes: Buffer
    try {
      bytes = readFileSync(path)
    } catch {
      return undefined
    }
    if (sha256Digest(bytes) !== digest) {
      rmSync(path, { force: true })
      return undefined
    }
    return bytes
  }

  /** Stores bytes already checked against `digest`. */
  writeVerified(digest: string, bytes: Uint8Array): void {
    const temporary = join(this.dir, tempName())
    try {
      writeFileSync(temporary, bytes, { flag: 'wx', mode: 0o600 })
      renameSync(temporary, this.path(digest))
    } catch (err) {
      rmSync(temporary, { force: true })
      throw err
    }
  }

  /**
   * Streams `body` into the store as blob `digest`, hashing and counting as it comes: more
   * bytes than `sizeBytes` stop it at once (Content-Length is never trusted), and the blob
   * appears only when both size and digest match.
   * @throws ImageRejectedError naming the blob and `what` on a size or digest mismatch; what
   * reading `body` throws. Nothing is left behind either way.
   */
  async write(
    digest: string,
    sizeBytes: number,
    body: AsyncIterable<Uint8Array>,
    what: string,
  ): Promise<string> {
    const final = this.path(digest)
    const temporary = join(this.dir, tempName())
    const file = await open(temporary, 'wx', 0o600)
    try {
      const hash = createHash('sha256')
      let received = 0
      for await (const chunk of body) {
        received += chunk.length
        if (received > sizeBytes) {
          throw new ImageRejectedError(
            `blob ${digest} (${what}) is larger than the ${sizeBytes} bytes its manifest gives; the registry serves other content than the image names`,
            { details: { digest, sizeBytes } },
          )
        }
        hash.update(chunk)
        await file.write(chunk)
      }
      if (received !== sizeBytes) {
        throw new ImageRejectedError(
          `blob ${digest} (${what}) is ${received} bytes, not the ${sizeBytes} its manifest gives`,
          { details: { digest, sizeBytes, received } },
        )
      }
      const actual = `sha256:${hash.digest('hex')}`
      if (actual !== digest) {
        throw new ImageRejectedError(
          `blob ${digest} (${what}) does not match its digest: the registry sent content hashing to ${actual}; the image is corrupt or was tampered with`,
          { details: { digest, actual } },
        )
      }
      await file.close()
      await rename(temporary, final)
      return final
    } catch (err) {
      await file.close().catch(() => undefined)
      await rm(temporary, { force: true })
      throw err
    }
  }
}
