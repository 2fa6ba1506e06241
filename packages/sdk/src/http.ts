/**
 * The SDK's HTTP layer over undici: one keep-alive pool per client, the API key on every call, a
 * deadline joined to the caller's signal, and every failure turned into a SandcellError.
 */
import { Agent, fetch, type Headers, type Response } from 'undici'
import type { z } from 'zod'
import {
  encodeQuery,
  errorFromBadBody,
  errorFromResponse,
  parseJsonBody,
  requestFailure,
  type RequestContext,
} from '@sandcell/envd-client'
import { InvalidArgumentError } from '@sandcell/shared'

export interface HttpClientOptions {
  /** Base URL of the server, e.g. `http://127.0.0.1:3000`; a path prefix is kept. */
  serverUrl: string
  /** Sent as `X-API-KEY` on control-plane calls. */
  apiKey?: string | undefined
  /** Aborts every request of this client. */
  signal?: AbortSignal | undefined
  /** Deadline of one request until its response headers, ms. */
  requestTimeoutMs: number
}

export interface HttpRequest {
  method: 'GET' | 'POST' | 'DELETE' | 'PUT'
  /** Path below the server URL, starting with `/`. */
  path: string
  /** Query parameters; undefined values are left out, the rest percent-encoded. */
  query?: Record<string, string | undefined> | undefined
  /** Sent as JSON. */
  json?: unknown
  /** Names the sandbox the path is about, for a precise 404 and 502. */
  sandboxId?: string | undefined
  signal?: AbortSignal | undefined
}

export interface HttpResponse {
  status: number
  headers: Headers
  /** The unread body; `json()` and `text()` consume it. */
  raw: Response
  context: RequestContext
  /** The error for a failure while reading the body (the same table as for the request). */
  failure(err: unknown): unknown
}

export interface HttpClient {
  readonly serverUrl: string
  /** Sends a request; resolves on a 2xx answer. @throws SandcellError for anything else. */
  request(request: HttpRequest): Promise<HttpResponse>
  /** Sends a request and validates its JSON body. @throws BugError when the body is not `schema`. */
  requestJson<S extends z.ZodType>(
    request: HttpRequest,
    schema: S,
  ): Promise<{ status: number; headers: Headers; body: z.output<S> }>
  /** Closes the connection pool. */
  close(): Promise<void>
}

/** A server URL as a base for relative paths; rejects anything but http(s). */
export function parseServerUrl(serverUrl: string): URL {
  let url: URL
  try {
    url = new URL(serverUrl)
  } catch (err) {
    throw new InvalidArgumentError(`server URL ${JSON.stringify(serverUrl)} is not a URL`, {
      cause: err,
    })
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError(
      `server URL ${JSON.stringify(serverUrl)} must start with http:// or https://`,
    )
  }
  if (!url.pathname.endsWith('/')) {
    url.pathname = `${url.pathname}/`
  }
  url.search = ''
  url.hash = ''
  return url
}

/**
 * Reads a JSON body (an empty one is `undefined`).
 * @throws BugError when the body is not JSON at all
 */
async function readJson(response: HttpResponse): Promise<unknown> {
  let text: string
  try {
    text = await response.raw.text()
  } catch (err) {
    throw response.failure(err)
  }
  return parseJsonBody(text, response.context)
}

export function createHttpClient(options: HttpClientOptions): HttpClient {
  const base = parseServerUrl(options.serverUrl)
  const serverUrl = base.href.replace(/\/$/, '')
  const agent = new Agent({ keepAliveTimeout: 10_000, connections: 64 })

  async function request(request: HttpRequest): Promise<HttpResponse> {
    const url = new URL(request.path.replace(/^\//, ''), base)
    url.search = encodeQuery(request.query ?? {})
    const context: RequestContext = {
      serverUrl,
      method: request.method,
      url: url.href,
      sandboxId: request.sandboxId,
    }
    const timeout = AbortSignal.timeout(options.requestTimeoutMs)
    const callers = [options.signal, request.signal].filter(
      (signal): signal is AbortSignal => signal !== undefined,
    )
    const failure = (err: unknown): unknown =>
      requestFailure(err, {
        callers,
        deadline: { signal: timeout, timeoutMs: options.requestTimeoutMs },
        context,
      })
    const headers: Record<string, string> = { accept: 'application/json' }
    if (options.apiKey !== undefined) {
      headers['x-api-key'] = options.apiKey
    }
    let body: string | undefined
    if (request.json !== undefined) {
      headers['content-type'] = 'application/json'
      body = JSON.stringify(request.json)
    }
    let response: Response
    try {
      response = await fetch(url, {
        method: request.method,
        headers,
        body,
        dispatcher: agent,
        signal: AbortSignal.any([...callers, timeout]),
      })
    } catch (err) {
      throw failure(err)
    }
    if (response.status < 200 || response.status > 299) {
      const text = await response.text().catch(() => '')
      throw errorFromResponse(response.status, text, context)
    }
    return { status: response.status, headers: response.headers, raw: response, context, failure }
  }

  return {
    serverUrl,
    request,
    async requestJson(req, schema) {
      const response = await request(req)
      const parsed = schema.safeParse(await readJson(response))
      if (!parsed.success) {
        throw errorFromBadBody(parsed.error, response.context)
      }
      return { status: response.status, headers: response.headers, body: parsed.data }
    },
    close: () => agent.close(),
  }
}
