/**
 * Files of COPY steps, stored once by the SDK's content hash: the link the SDK asks for (a URL
 * on this server signed with an HMAC, since the SDK sends that upload without its API key) and
 * the upload itself, written to a temporary file and renamed only when complete.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { createWriteStream, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { filesHashPattern } from '@sandcell/builds'
import {
  InvalidArgumentError,
  PermissionDeniedError,
  ResourceExhaustedError,
  tapChunks,
} from '@sandcell/shared'

/** How long an upload link stays valid (E2B's are 30 min). */
const linkLifetimeMs = 30 * 60_000

export class TemplateFiles {
  readonly dir: string
  readonly #maxBytes: number
  /** Per process: links of an earlier process expire with it, which the SDK survives by asking again. */
  readonly #secret = randomBytes(32)

  constructor(options: { dir: string; maxBytes: number }) {
    this.dir = options.dir
    this.#maxBytes = options.maxBytes
  }

  start(): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    for (const name of readdirSync(this.dir)) {
      if (name.includes('.tmp-')) {
        rmSync(join(this.dir, name), { force: true })
      }
    }
  }

  static assertHash(hash: string): void {
    if (!filesHashPattern.test(hash)) {
      throw new InvalidArgumentError(
        `files hash ${JSON.stringify(hash)} must be 64 lower-case hex digits`,
      )
    }
  }

  has(hash: string): boolean {
    return existsSync(join(this.dir, `${hash}.tar`))
  }

  #sign(templateId: string, hash: string, expires: number): string {
    return createHmac('sha256', this.#secret)
      .update(`${templateId}\n${hash}\n${expires}`)
      .digest('base64url')
  }

  /** The query string that authorises one upload of `hash` for a while. */
  signedQuery(templateId: string, hash: string): string {
    const expires = Date.now() + linkLifetimeMs
    return `expires=${expires}&signature=${this.#sign(templateId, hash, expires)}`
  }

  /** @throws PermissionDeniedError for a missing, wrong or expired signature */
  verify(
    templateId: string,
    hash: string,
    expires: string | undefined,
    signature: string | undefined,
  ): void {
    const when = Number(expires)
    if (signature === undefined || !Number.isSafeInteger(when)) {
      throw new PermissionDeniedError('the upload link is not signed: ask for a new one')
    }
    const expected = Buffer.from(this.#sign(templateId, hash, when))
    const given = Buffer.from(signature)
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
      throw new PermissionDeniedError('the upload link signature is wrong: ask for a new one')
    }
    if (when < Date.now()) {
      throw new PermissionDeniedError('the upload link expired: ask for a new one')
    }
  }

  /**
   * Stores an uploaded body as the files of `hash` (a second upload of the same hash replaces
   * the first whole).
   * @throws ResourceExhaustedError beyond the upload limit
   */
  async store(hash: string, body: Readable): Promise<number> {
    const temporary = join(this.dir, `${hash}.tmp-${randomBytes(6).toString('hex')}`)
    let bytes = 0
    const limit = this.#maxBytes
    const counter = tapChunks((chunk) => {
      bytes += chunk.length
      if (bytes > limit) {
        throw new ResourceExhaustedError(
          `the upload is larger than the limit of ${Math.round(limit / 1048576)} MiB (builds.maxUploadMiB)`,
        )
      }
    })
    try {
      await pipeline(body, counter, createWriteStream(temporary, { mode: 0o600 }))
      await rename(temporary, join(this.dir, `${hash}.tar`))
      return bytes
    } catch (err) {
      await rm(temporary, { force: true })
      throw err
    }
  }
}
