/**
 * A client of one registry's distribution API for pulls: manifests by tag or digest, blobs
 * streamed into the blob store, and the authentication registries ask for (anonymous or Basic
 * bearer tokens from the realm a `WWW-Authenticate: Bearer` challenge names, or plain Basic).
 */
import { createHash } from 'node:crypto'
import {
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
  ImageRejectedError,
  type Logger,
} from '@sandcell/shared'
import type { Dispatcher } from 'undici'
import { z } from 'zod'
import type { BlobStore } from './blob-store.js'
import { sha256Digest } from './digest.js'
import { isLoopbackRegistry, registryApiHost } from './image-reference.js'
import type { ImagesConfig } from './images-config.js'
import { manifestAccept, maxManifestBytes, type Descriptor } from './manifest.js'
import {
  BodyTooLargeError,
  TransientFailure,
  describeNetworkError,
  readLimited,
  send,
  withRetries,
  type RegistryResponse,
} from './registry-http.js'
import { parseWwwAuthenticate } from './www-authenticate.js'

/** A registry login: a username and a password or access token. */
export interface RegistryCredentials {
  username: string
  password: string
}

/** Bearer tokens and Basic logins per registry, repository and login, until they expire. */
export class RegistryTokenCache {
  readonly #entries = new Map<string, { authorization: string; expiresAt: number }>()

  get(key: string): string | undefined {
    const entry = this.#entries.get(key)
    if (entry === undefined) {
      return undefined
    }
    if (entry.expiresAt <= Date.now()) {
      this.#entries.delete(key)
      return undefined
    }
    return entry.authorization
  }

  set(key: string, authorization: string, lifetimeMs: number): void {
    this.#entries.set(key, { authorization, expiresAt: Date.now() + lifetimeMs })
  }
}

export interface RegistryClientOptions {
  /** The registry host as resolved (after mirrors): `docker.io`, `127.0.0.1:5000`. */
  registry: string
  config: ImagesConfig
  /** This pull's own login; else the configured one for the host, else anonymous. */
  credentials?: RegistryCredentials
  dispatcher: Dispatcher
  tokens: RegistryTokenCache
  log: Logger
  signal?: AbortSignal
}

/** A manifest or index as fetched, with the digest of its exact bytes. */
export interface FetchedManifest {
  bytes: Buffer
  contentType: string | undefined
  digest: string
}

const tokenAnswerSchema = z.object({
  token: z.string().optional(),
  access_token: z.string().optional(),
  expires_in: z.number().positive().optional(),
})

// Docker's default when the token service says nothing, less a margin for clock and transit.
const defaultTokenLifetimeMs = 60_000
const tokenMarginMs = 10_000
const basicLifetimeMs = 3_600_000
const maxTokenAnswerBytes = 1024 * 1024
const maxErrorBodyBytes = 64 * 1024

export class RegistryClient {
  readonly registry: string
  readonly #options: RegistryClientOptions
  readonly #apiHost: string
  readonly #baseUrl: string
  readonly #credentials: RegistryCredentials | undefined
  readonly #loginKey: string
  readonly #insecure: boolean

  constructor(options: RegistryClientOptions) {
    this.#options = options
    this.registry = options.registry
    this.#apiHost = registryApiHost(options.registry)
    const { config } = options
    this.#insecure =
      isLoopbackRegistry(options.registry) || config.insecureRegistries.includes(options.registry)
    this.#baseUrl = `${this.#insecure ? 'http' : 'https'}://${this.#apiHost}/v2/`
    this.#credentials =
      options.credentials ??
      config.credentials[options.registry] ??
      config.credentials[this.#apiHost]
    // Keys the token cache without keeping a password in it.
    this.#loginKey =
      this.#credentials === undefined
        ? 'anonymous'
        : createHash('sha256')
            .update(`${this.#credentials.username}\0${this.#credentials.password}`)
            .digest('hex')
            .slice(0, 16)
  }

  /**
   * GETs the manifest or index `reference` (a tag or a digest) names; one named by digest is
   * checked against it.
   * @throws NotFoundError for an unknown repository, tag or digest; UnauthenticatedError;
   * UnavailableError after retries; ImageRejectedError for a digest mismatch
   */
  fetchManifest(repository: string, reference: string, image: string): Promise<FetchedManifest> {
    const path = `${repository}/manifests/${reference}`
    return this.#retrying(`fetch the manifest of ${image}`, async () => {
      const response = await this.#get(repository, path, { accept: manifestAccept })
      if (response.statusCode !== 200) {
        throw await this.#statusError(response, repository, image, { manifest: reference })
      }
      let bytes: Buffer
      try {
        bytes = await readLimited(response, maxManifestBytes, this.#options.config.requestTimeoutMs)
      } catch (err) {
        if (err instanceof BodyTooLargeError) {
          throw new ImageRejectedError(
            `${image}: the manifest is larger than ${maxManifestBytes} bytes`,
          )
        }
        throw err
      }
      const digest = sha256Digest(bytes)
      if (reference.startsWith('sha256:') && digest !== reference) {
        throw new ImageRejectedError(
          `manifest ${reference} of ${image} does not match its digest: the registry sent content hashing to ${digest}; the image is corrupt or was tampered with`,
          { details: { digest: reference, actual: digest } },
        )
      }
      const contentType = response.headers['content-type']
      return {
        bytes,
        contentType: Array.isArray(contentType) ? contentType[0] : contentType,
        digest,
      }
    })
  }

  /**
   * Downloads blob `descriptor` into `store` (verified while it streams) unless it is there.
   * A download that breaks off is started again, within the retries.
   * @returns the blob's path
   * @throws NotFoundError when the registry lacks it; ImageRejectedError on a size or digest
   * mismatch; UnauthenticatedError; UnavailableError after retries
   */
  fetchBlob(
    repository: string,
    descriptor: Descriptor,
    image: string,
    store: BlobStore,
    what: string,
  ): Promise<string> {
    const path = `${repository}/blobs/${descriptor.digest}`
    return this.#retrying(`download ${what} of ${image}`, async () => {
      const existing = store.find(descriptor.digest, descriptor.size)
      if (existing !== undefined) {
        return existing
      }
      const response = await this.#get(repository, path, {})
      if (response.statusCode !== 200) {
        throw await this.#statusError(response, repository, image, { blob: descriptor.digest })
      }
      return store.write(
        descriptor.digest,
        descriptor.size,
        transientBody(response, this.#options.config.requestTimeoutMs),
        `${what} of ${image}`,
      )
    })
  }

  #retrying<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    const { config, log, signal } = this.#options
    return withRetries(
      this.#apiHost,
      what,
      { retries: config.retries, log, ...(signal === undefined ? {} : { signal }) },
      attempt,
    )
  }

  /** A GET with the authorization the registry asks for, answering one challenge. */
  async #get(
    repository: string,
    path: string,
    headers: Record<string, string>,
  ): Promise<RegistryResponse> {
    const { dispatcher, config, signal, log } = this.#options
    const url = new URL(path, this.#baseUrl)
    const repositoryKey = `${this.#apiHost}|${repository}|${this.#loginKey}`
    const hostKey = `${this.#apiHost}||${this.#loginKey}`
    let authorization = this.#options.tokens.get(repositoryKey) ?? this.#options.tokens.get(hostKey)
    for (let challenged = false; ; challenged = true) {
      const started = performance.now()
      const response = await send(url, {
        dispatcher,
        timeoutMs: config.requestTimeoutMs,
        headers,
        ...(signal === undefined ? {} : { signal }),
        ...(authorization === undefined ? {} : { authorization }),
      })
      log.debug(
        {
          registry: this.#apiHost,
          path: url.pathname,
          status: response.statusCode,
          durationMs: Math.round(performance.now() - started),
        },
        'registry request',
      )
      if (response.statusCode !== 401) {
        return response
      }
      const header = response.headers['www-authenticate']
      await response.body.dump()
      if (challenged) {
        throw this.#refused(repository)
      }
      const answer = await this.#answerChallenge(
        Array.isArray(header) ? header.join(', ') : (header ?? ''),
        repository,
      )
      this.#options.tokens.set(
        answer.scheme === 'bearer' ? repositoryKey : hostKey,
        answer.authorization,
        answer.lifetimeMs,
      )
      authorization = answer.authorization
    }
  }

  async #answerChallenge(
    header: string,
    repository: string,
  ): Promise<{ scheme: 'bearer' | 'basic'; authorization: string; lifetimeMs: number }> {
    const challenges = parseWwwAuthenticate(header)
    const bearer = challenges.find((c) => c.scheme === 'bearer')
    if (bearer !== undefined) {
      const realm = bearer.params.realm
      if (realm === undefined) {
        throw new UnavailableError(
          `registry ${this.#apiHost} asked for a bearer token without saying where to get it (no realm)`,
        )
      }
      const scopes = (bearer.params.scope ?? `repository:${repository}:pull`).split(' ')
      return { scheme: 'bearer', ...(await this.#fetchToken(realm, bearer.params.service, scopes)) }
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (this.#credentials === undefined) {
        throw this.#refused(repository)
      }
      return { scheme: 'basic', authorization: this.#basic(), lifetimeMs: basicLifetimeMs }
    }
    throw new UnauthenticatedError(
      `registry ${this.#apiHost} asks for an authentication sandcell does not speak (${header.slice(0, 100) || 'no WWW-Authenticate header'}); it supports Bearer tokens and Basic`,
      { details: { registry: this.#apiHost } },
    )
  }

  async #fetchToken(
    realm: string,
    service: string | undefined,
    scopes: readonly string[],
  ): Promise<{ authorization: string; lifetimeMs: number }> {
    const { dispatcher, config, signal } = this.#options
    let url: URL
    try {
      url = new URL(realm)
    } catch {
      throw new UnavailableError(
        `registry ${this.#apiHost} names a token service that is not a URL`,
      )
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new UnavailableError(
        `registry ${this.#apiHost} names a token service that is not http(s)`,
      )
    }
    const plainAllowed =
      isLoopbackRegistry(url.host) || config.insecureRegistries.includes(url.host)
    if (url.protocol === 'http:' && this.#credentials !== undefined && !plainAllowed) {
      throw new UnauthenticatedError(
        `registry ${this.#apiHost} asks for credentials to be sent over plain http to ${url.host}; sandcell refuses (add the host to images.insecureRegistries if that is intended)`,
        { details: { registry: this.#apiHost } },
      )
    }
    if (service !== undefined) {
      url.searchParams.set('service', service)
    }
    for (const scope of scopes) {
      url.searchParams.append('scope', scope)
    }
    const response = await send(url, {
      dispatcher,
      timeoutMs: config.requestTimeoutMs,
      ...(signal === undefined ? {} : { signal }),
      ...(this.#credentials === undefined ? {} : { authorization: this.#basic() }),
    })
    if (response.statusCode === 401 || response.statusCode === 403) {
      await response.body.dump()
      throw this.#refused(scopes.join(' '))
    }
    if (response.statusCode !== 200) {
      await response.body.dump()
      throw new UnavailableError(
        `the token service of registry ${this.#apiHost} (${url.host}) answered ${response.statusCode}`,
        { details: { registry: this.#apiHost, status: response.statusCode } },
      )
    }
    const body = await readLimited(response, maxTokenAnswerBytes, config.requestTimeoutMs)
    let answer: z.output<typeof tokenAnswerSchema> | undefined
    try {
      answer = tokenAnswerSchema.parse(JSON.parse(body.toString('utf8')))
    } catch {
      answer = undefined
    }
    const token = answer?.token ?? answer?.access_token
    if (token === undefined || token === '') {
      throw new UnavailableError(
        `the token service of registry ${this.#apiHost} (${url.host}) gave no token`,
      )
    }
    const lifetimeMs =
      answer?.expires_in === undefined ? defaultTokenLifetimeMs : answer.expires_in * 1000
    return {
      authorization: `Bearer ${token}`,
      lifetimeMs: Math.max(0, lifetimeMs - tokenMarginMs),
    }
  }

  #basic(): string {
    const { username = '', password = '' } = this.#credentials ?? {}
    return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`
  }

  #refused(what: string): UnauthenticatedError {
    const details = { registry: this.#apiHost }
    return this.#credentials === undefined
      ? new UnauthenticatedError(
          `registry ${this.#apiHost} requires credentials for ${what} (or it does not exist): give a username and password with the image, or in images.credentials`,
          { details },
        )
      : new UnauthenticatedError(
          `the registry refused the credentials for host ${this.#apiHost}: check the username and password given for it`,
          { details },
        )
  }

  /** The error for an answer other than 200 (and 401, handled before). */
  async #statusError(
    response: RegistryResponse,
    repository: string,
    image: string,
    target: { manifest: string } | { blob: string },
  ): Promise<Error> {
    const status = response.statusCode
    let code: string | undefined
    try {
      const body = await readLimited(
        response,
        maxErrorBodyBytes,
        this.#options.config.requestTimeoutMs,
      )
      code = (JSON.parse(body.toString('utf8')) as { errors?: { code?: string }[] }).errors?.[0]
        ?.code
    } catch {
      code = undefined
    }
    const details = {
      registry: this.#apiHost,
      repository,
      status,
      ...(code === undefined ? {} : { code }),
    }
    if (status === 404) {
      if ('blob' in target) {
        return new NotFoundError(
          `blob ${target.blob} of image ${image} is missing from registry ${this.#apiHost}`,
          { details },
        )
      }
      const reason =
        code === 'NAME_UNKNOWN'
          ? `the registry has no repository ${repository}`
          : target.manifest.startsWith('sha256:')
            ? `the registry has no manifest ${target.manifest}`
            : `the registry has no tag ${target.manifest}`
      return new NotFoundError(`image ${image} not found: ${reason}`, { details })
    }
    if (status === 403) {
      return new PermissionDeniedError(
        `registry ${this.#apiHost} denied pulling ${repository}${this.#credentials === undefined ? ' anonymously' : ' with the credentials given'}`,
        { details },
      )
    }
    return new UnavailableError(
      `registry ${this.#apiHost} answered ${status}${code === undefined ? '' : ` (${code})`} to GET ${response.url.pathname}`,
      { details },
    )
  }
}

/** A response body whose network failures are TransientFailures, so the download is retried. */
async function* transientBody(
  response: RegistryResponse,
  timeoutMs: number,
): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of response.body) {
      yield chunk as Uint8Array
    }
  } catch (err) {
    throw new TransientFailure(describeNetworkError(err, response.url, timeoutMs))
  }
}
