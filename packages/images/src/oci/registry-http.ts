/**
 * One HTTP exchange with a registry: a deadline on every request (response headers, and a
 * download that stalls), redirects followed by hand (credentials never leave their origin), and
 * retries with backoff on network failures, timeouts, 429 and 5xx.
 */
import { errorMessage, delay, UnavailableError, type Logger } from '@sandcell/shared'
import { Agent, request, type Dispatcher } from 'undici'

export type RegistryResponse = Dispatcher.ResponseData & { url: URL }

/** A failure worth another attempt; thrown inside {@link withRetries}. */
export class TransientFailure extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message)
  }
}

const maxRedirects = 5
const firstBackoffMs = 200
const maxBackoffMs = 5_000

/** A connection pool for registries whose connects give up after `timeoutMs`. */
export function createRegistryDispatcher(timeoutMs: number): Agent {
  return new Agent({ connect: { timeout: timeoutMs }, connections: 8 })
}

export interface SendOptions {
  dispatcher: Dispatcher
  timeoutMs: number
  signal?: AbortSignal
  /** Sent to the first origin only: dropped when a redirect leaves it. */
  authorization?: string
  headers?: Record<string, string>
}

/**
 * Sends a GET, following redirects (registries send blobs to object storage). The body is the
 * caller's to read or dump.
 * @throws TransientFailure on network errors, timeouts, 429 and 5xx; the signal's reason
 */
export async function send(url: URL, options: SendOptions): Promise<RegistryResponse> {
  let current = url
  for (let redirects = 0; ; redirects += 1) {
    const sameOrigin = current.origin === url.origin
    let response: Dispatcher.ResponseData
    try {
      response = await request(current, {
        method: 'GET',
        dispatcher: options.dispatcher,
        headersTimeout: options.timeoutMs,
        bodyTimeout: options.timeoutMs,
        headers: {
          'user-agent': 'sandcell',
          ...options.headers,
          ...(sameOrigin && options.authorization !== undefined
            ? { authorization: options.authorization }
            : {}),
        },
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      })
    } catch (err) {
      options.signal?.throwIfAborted()
      throw new TransientFailure(describeNetworkError(err, current, options.timeoutMs))
    }
    const location = response.headers.location
    if (response.statusCode >= 300 && response.statusCode < 400 && location !== undefined) {
      await response.body.dump()
      if (redirects >= maxRedirects) {
        throw new TransientFailure(`${url.host} redirected more than ${maxRedirects} times`)
      }
      current = new URL(Array.isArray(location) ? (location[0] as string) : location, current)
      continue
    }
    if (response.statusCode === 429 || response.statusCode >= 500) {
      await response.body.dump()
      throw new TransientFailure(
        `${current.host} answered ${response.statusCode}`,
        retryAfterMs(response.headers['retry-after']),
      )
    }
    return Object.assign(response, { url: current })
  }
}

/** What failed, in words: undici's codes become "did not answer within N ms" and the like. */
export function describeNetworkError(err: unknown, url: URL, timeoutMs: number): string {
  const code = (err as { code?: unknown }).code
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return `${url.host} did not answer within ${timeoutMs} ms`
    case 'UND_ERR_BODY_TIMEOUT':
      return `${url.host} stopped sending data for ${timeoutMs} ms`
    case 'UND_ERR_CONNECT_TIMEOUT':
      return `cannot connect to ${url.host} within ${timeoutMs} ms`
    case 'ECONNREFUSED':
      return `${url.host} refused the connection (nothing listens there)`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the name ${url.hostname} does not resolve`
    default: {
      const cause = (err as { cause?: unknown }).cause
      return `${url.host}: ${errorMessage(err)}${cause instanceof Error ? ` (${cause.message})` : ''}`
    }
  }
}

function retryAfterMs(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header
  const seconds = Number(value)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined
}

export interface RetryOptions {
  retries: number
  signal?: AbortSignal
  log: Logger
}

/**
 * Runs `attempt` until it succeeds or throws something other than a TransientFailure, at most
 * `retries` more times, waiting 200 ms, 400 ms… (at most 5 s, or the server's Retry-After).
 * @throws UnavailableError naming the host, the last failure and how long it tried
 */
export async function withRetries<T>(
  host: string,
  what: string,
  options: RetryOptions,
  attempt: () => Promise<T>,
): Promise<T> {
  const started = performance.now()
  for (let failures = 0; ; failures += 1) {
    try {
      return await attempt()
    } catch (err) {
      if (!(err instanceof TransientFailure)) {
        throw err
      }
      options.signal?.throwIfAborted()
      if (failures >= options.retries) {
        const seconds = ((performance.now() - started) / 1000).toFixed(1)
        throw new UnavailableError(
          `registry ${host} is unavailable: ${err.message} (${failures + 1} attempt${failures === 0 ? '' : 's'} over ${seconds} s to ${what}); check that it is up and reachable, or raise images.requestTimeoutMs / images.retries`,
          { cause: err, details: { registry: host, attempts: failures + 1 } },
        )
      }
      const backoff = Math.min(maxBackoffMs, firstBackoffMs * 2 ** failures)
      const waitMs = Math.min(
        maxBackoffMs,
        err.retryAfterMs ?? backoff * (0.75 + Math.random() / 2),
      )
      options.log.debug({ registry: host, err: err.message, waitMs }, 'registry request retried')
      await delay(waitMs, options.signal)
    }
  }
}

/**
 * Reads a whole small body, refusing more than `maxBytes` (a manifest or token answer).
 * @throws TransientFailure when the body stalls or breaks; Error when it is too large
 */
export async function readLimited(
  response: RegistryResponse,
  maxBytes: number,
  timeoutMs: number,
): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  try {
    for await (const chunk of response.body) {
      total += (chunk as Buffer).length
      if (total > maxBytes) {
        response.body.destroy()
        throw new BodyTooLargeError(`${response.url.host} sent more than ${maxBytes} bytes`)
      }
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (err instanceof BodyTooLargeError) {
      throw err
    }
    throw new TransientFailure(describeNetworkError(err, response.url, timeoutMs))
  }
  return Buffer.concat(chunks)
}

/** A body beyond what such a document may be: not worth retrying. */
export class BodyTooLargeError extends Error {}
