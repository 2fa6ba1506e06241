/**
 * OpenLambda-style functions on this server: deploys (code unpacked once per digest, a version
 * recorded, made current in one step, so a request sees one whole version), the registry's
 * listing and metadata, deletion, and invocation through the function engine with the methods
 * ol.yaml allows.
 */
import { randomBytes } from 'node:crypto'
import { chownSync, existsSync, mkdirSync, readdirSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import {
  allowedMethods,
  assertFunctionName,
  functionError,
  unpackFunctionCode,
  type FunctionEngine,
  type FunctionRequest,
  type FunctionResponse,
} from '@sandcell/functions'
import { NotFoundError, type Logger } from '@sandcell/shared'
import type { FunctionStore, FunctionVersionRecord } from '../store/function-store.js'

export interface FunctionServiceOptions {
  store: FunctionStore
  engine: FunctionEngine
  /** `<dataDir>/functions`. */
  functionsDir: string
  uidBase: number
  log: Logger
}

const temporaryPrefix = '.tmp-'

export class FunctionService {
  readonly #store: FunctionStore
  readonly #engine: FunctionEngine
  readonly #codeDir: string
  readonly #uidBase: number
  readonly #log: Logger

  constructor(options: FunctionServiceOptions) {
    this.#store = options.store
    this.#engine = options.engine
    this.#codeDir = join(options.functionsDir, 'code')
    this.#uidBase = options.uidBase
    this.#log = options.log.child({ component: 'server.functions' })
  }

  /** Prepares the code store (removing what a crash left half made) and the runners. */
  async start(): Promise<void> {
    mkdirSync(this.#codeDir, { recursive: true, mode: 0o700 })
    for (const name of readdirSync(this.#codeDir)) {
      if (name.startsWith(temporaryPrefix)) {
        await rm(join(this.#codeDir, name), { recursive: true, force: true })
      }
    }
    await this.#engine.start()
  }

  close(): Promise<void> {
    return this.#engine.close()
  }

  #layerDir(digest: string): string {
    return join(this.#codeDir, digest.replace(/^sha256:/, ''))
  }

  /**
   * Deploys a new version of `name` from an upload (tar.gz, tar or one file).
   * @throws InvalidArgumentError for a bad name or code, ResourceExhaustedError past a limit
   */
  async deploy(
    name: string,
    upload: Readable,
    fileName: string | undefined,
  ): Promise<FunctionVersionRecord> {
    assertFunctionName(name)
    const scratch = join(this.#codeDir, `${temporaryPrefix}${randomBytes(8).toString('hex')}`)
    mkdirSync(scratch, { mode: 0o755 })
    // The layer's own directory is the sandbox's `/` in the overlay: owned by its root.
    chownSync(scratch, this.#uidBase, this.#uidBase)
    try {
      const code = await unpackFunctionCode(upload, {
        target: join(scratch, 'function'),
        spoolPath: join(
          this.#codeDir,
          `${temporaryPrefix}${randomBytes(8).toString('hex')}.upload`,
        ),
        uidOffset: this.#uidBase,
        ...(fileName === undefined ? {} : { fileName }),
      })
      const layer = this.#layerDir(code.digest)
      if (existsSync(layer)) {
        await rm(scratch, { recursive: true, force: true })
      } else {
        await rename(scratch, layer)
      }
      const version: FunctionVersionRecord = {
        name,
        digest: code.digest,
        runtime: code.runtime,
        entry: code.entry,
        config: code.config,
        uploadBytes: code.uploadBytes,
        entries: code.entries,
        uploadedAt: Date.now(),
      }
      this.#store.deploy(version)
      this.#log.info(
        { function: name, digest: code.digest, runtime: code.runtime },
        'function deployed',
      )
      return version
    } catch (err) {
      await rm(scratch, { recursive: true, force: true })
      throw err
    }
  }

  names(): string[] {
    return this.#store.names()
  }

  /** @throws NotFoundError (404) */
  get(name: string): { current: FunctionVersionRecord; versions: FunctionVersionRecord[] } {
    const current = this.#store.current(name)
    if (current === undefined) {
      throw new NotFoundError(`function ${JSON.stringify(name)} does not exist`)
    }
    return { current, versions: this.#store.versions(name) }
  }

  /** @throws NotFoundError (404) */
  async delete(name: string): Promise<void> {
    if (!this.#store.delete(name)) {
      throw new NotFoundError(`function ${JSON.stringify(name)} does not exist`)
    }
    const inUse = this.#store.digestsInUse()
    for (const entry of readdirSync(this.#codeDir)) {
      if (!entry.startsWith(temporaryPrefix) && !inUse.has(`sha256:${entry}`)) {
        await rm(join(this.#codeDir, entry), { recursive: true, force: true })
      }
    }
    this.#log.info({ function: name }, 'function deleted')
  }

  /** Runs a request through the current version of `name`. */
  async invoke(name: string, request: FunctionRequest): Promise<FunctionResponse> {
    const version = this.#store.current(name)
    if (version === undefined) {
      return functionError(404, 'NOT_FOUND', `function ${JSON.stringify(name)} does not exist`)
    }
    const methods = allowedMethods(version.config)
    if (methods !== 'any' && !methods.includes(request.method)) {
      return functionError(
        405,
        'METHOD_NOT_ALLOWED',
        `${request.method} is not allowed; ol.yaml allows ${methods.join(', ')}`,
      )
    }
    return this.#engine.invoke({ ...version, layerDir: this.#layerDir(version.digest) }, request)
  }
}
