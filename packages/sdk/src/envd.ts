/**
 * A sandbox's envd through the server: Connect clients for `process.Process` and
 * `filesystem.Filesystem` and `/files` transfers, all sent to the server URL with the headers
 * that route them to the sandbox (`E2b-Sandbox-Id`, `E2b-Sandbox-Port`) and authorize them
 * (`X-Access-Token`, `Authorization: Basic base64("<user>:")`).
 */
import { Agent as HttpAgent } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import type { ReadableStream } from 'node:stream/web'
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from '@connectrpc/connect'
import { createConnectTransport } from '@connectrpc/connect-node'
import { Filesystem, Process, defaultUser, envdHeaders, envdPort } from '@sandcell/protocol'
import { BugError, InvalidArgumentError } from '@sandcell/shared'
import type { BodyInit } from 'undici'
import type { HttpClient } from './http.js'
import { uploadedFilesSchema, type UploadedFile } from './wire.js'

/** Seconds between keepalive events envd sends on idle streams, as the e2b SDK asks. */
const keepaliveIntervalS = 50

/** What reaching a sandbox's envd takes: its id and, for secured sandboxes, its token. */
export interface EnvdTarget {
  sandboxId: string
  envdAccessToken?: string | undefined
}

export interface EnvdClientOptions {
  /** Linux user of calls that name none (an `authorization` header of their own wins). @default 'user' */
  user?: string
}

export interface TransferOptions {
  /** Linux user the file is read or written as. @default the client's user */
  user?: string
  /** Aborts the transfer; there is no other deadline, so large files take what they need. */
  signal?: AbortSignal
}

/** Data to upload: bytes, text (UTF-8) or a stream of chunks (a Node Readable is one). */
export type UploadData = Uint8Array | string | AsyncIterable<Uint8Array>

export interface EnvdClient {
  readonly sandboxId: string
  /** envd's process service: `start`, `connect`, `sendInput`, `update` (PTY size)… */
  readonly process: Client<typeof Process>
  /** envd's filesystem service: `stat`, `listDir`, `makeDir`, `move`, `remove`, `watchDir`… */
  readonly filesystem: Client<typeof Filesystem>
  /**
   * Writes a file (parents are created), streaming `data`.
   * @throws NotEnoughSpaceError when the sandbox's disk is full, PermissionDeniedError…
   */
  uploadFile(path: string, data: UploadData, options?: TransferOptions): Promise<UploadedFile>
  /**
   * Reads a file as a stream of chunks.
   * @throws FileNotFoundError when it does not exist, InvalidArgumentError for a directory.
   */
  downloadFile(path: string, options?: TransferOptions): Promise<ReadableStream<Uint8Array>>
  /** Closes idle connections of the RPC clients. */
  close(): void
}

/** `Basic base64("<user>:")`: how envd learns the Linux user a request acts as. */
export function basicAuthorization(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`
}

/** The headers that route a request to a sandbox's envd and authorize it there. */
export function routingHeaders(target: EnvdTarget): Record<string, string> {
  return {
    [envdHeaders.sandboxId]: target.sandboxId,
    [envdHeaders.sandboxPort]: String(envdPort),
    ...(target.envdAccessToken === undefined
      ? {}
      : { [envdHeaders.accessToken]: target.envdAccessToken }),
  }
}

/**
 * Adds the routing, token, default-user and keepalive headers to every RPC, the client's signal
 * to its own, and names the sandbox and server in an `unavailable` error.
 */
function envdInterceptor(
  target: EnvdTarget,
  user: string,
  serverUrl: string,
  signal: AbortSignal | undefined,
): Interceptor {
  const headers = routingHeaders(target)
  return (next) => async (req) => {
    for (const [name, value] of Object.entries(headers)) {
      req.header.set(name, value)
    }
    if (!req.header.has('authorization')) {
      req.header.set('authorization', basicAuthorization(user))
    }
    if (req.stream) {
      req.header.set(envdHeaders.keepalivePingInterval, String(keepaliveIntervalS))
    }
    const joined = signal === undefined ? req.signal : AbortSignal.any([req.signal, signal])
    try {
      return await next({ ...req, signal: joined })
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unavailable) {
        const named = new ConnectError(
          `sandbox ${target.sandboxId} is unavailable through ${serverUrl}: ${err.rawMessage}`,
          err.code,
          err.metadata,
          undefined,
          err,
        )
        named.details = err.details
        throw named
      }
      throw err
    }
  }
}

export function createEnvdClient(
  http: HttpClient,
  target: EnvdTarget,
  options: EnvdClientOptions & { signal?: AbortSignal | undefined } = {},
): EnvdClient {
  if (target.sandboxId === '') {
    throw new InvalidArgumentError('a sandbox id is required')
  }
  const user = options.user ?? defaultUser
  const secure = http.serverUrl.startsWith('https:')
  const agent = secure
    ? new HttpsAgent({ keepAlive: true, maxSockets: 64 })
    : new HttpAgent({ keepAlive: true, maxSockets: 64 })
  const transport = createConnectTransport({
    httpVersion: '1.1',
    baseUrl: http.serverUrl,
    useBinaryFormat: true,
    nodeOptions: { agent },
    interceptors: [envdInterceptor(target, user, http.serverUrl, options.signal)],
  })

  function filesRequest(path: string, transfer: TransferOptions) {
    if (path === '') {
      throw new InvalidArgumentError('a file path is required')
    }
    const as = transfer.user ?? user
    return {
      path: '/files',
      query: { path, username: as },
      headers: { ...routingHeaders(target), authorization: basicAuthorization(as) },
      anonymous: true,
      sandboxId: target.sandboxId,
      filePath: path,
      signal: AbortSignal.any(
        [transfer.signal, options.signal].filter((s): s is AbortSignal => s !== undefined),
      ),
      noTimeout: true,
    }
  }

  return {
    sandboxId: target.sandboxId,
    process: createClient(Process, transport),
    filesystem: createClient(Filesystem, transport),

    async uploadFile(path, data, transfer = {}) {
      const request = filesRequest(path, transfer)
      const { body } = await http.requestJson(
        {
          method: 'POST',
          ...request,
          headers: { ...request.headers, 'content-type': 'application/octet-stream' },
          body: data as BodyInit,
        },
        uploadedFilesSchema,
      )
      // One raw-body upload writes one file; the schema guarantees there is at least one.
      return body[0] as UploadedFile
    },

    async downloadFile(path, transfer = {}) {
      const response = await http.request({ method: 'GET', ...filesRequest(path, transfer) })
      const body = response.raw.body
      if (body === null) {
        throw new BugError(`GET /files for ${path} answered without a body`)
      }
      return body as ReadableStream<Uint8Array>
    },

    close: () => agent.destroy(),
  }
}
