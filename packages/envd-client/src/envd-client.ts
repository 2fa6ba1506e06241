/**
 * The one client of a sandbox's agent (envd): Connect clients for `process.Process` and
 * `filesystem.Filesystem` plus `/files` transfers and `/archive` uploads, reached either directly over the agent's Unix
 * socket (the host side: drivers, server, run engine) or through a sandcell server's envd proxy
 * with the headers that route a request to the sandbox and authorize it there (SDK, CLI).
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
import {
  Filesystem,
  Process,
  basicAuthorization,
  defaultUser,
  envdHeaders,
  envdPort,
} from '@sandcell/protocol'
import { InvalidArgumentError } from '@sandcell/shared'
import { Agent as UndiciAgent } from 'undici'
import {
  downloadFile,
  checkHealth,
  initAgent,
  uploadArchive,
  uploadFile,
  type AgentInit,
  type ArchiveUploadOptions,
  type ArchiveUploadResult,
  type HttpRoute,
  type InitOptions,
  type TransferOptions,
  type UploadData,
  type UploadedFile,
} from './agent-http.js'

/** Seconds between keepalive events envd sends on idle streams, as the e2b SDK asks. */
const keepaliveIntervalS = 50

/** Connections one client keeps to its agent or server, per protocol. */
const maxConnections = 64

export interface EnvdClientOptions {
  /** Linux user of calls that name none (an `authorization` header of their own wins). @default 'user' */
  user?: string
}

/** A sandbox's agent, however it is reached. */
export interface EnvdClient {
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
  /**
   * Extracts a tar archive (gzip-compressed or not) below the directory `path` (created with its
   * missing parents), streaming `data`; everything written belongs to the user (sandcell's
   * `POST /archive`, not in envd). Resolves with the entries and file bytes written.
   * @throws InvalidArgumentError for an entry the agent refuses (absolute, `..`, device node…;
   *   earlier entries stay written), NotEnoughSpaceError when the sandbox's disk is full…
   */
  uploadArchive(
    path: string,
    data: UploadData,
    options?: ArchiveUploadOptions,
  ): Promise<ArchiveUploadResult>
  /** Closes the client's connections. */
  close(): void
}

/** An agent reached over its Unix socket: what `Sandbox.connect()` returns on the host. */
export interface AgentConnection extends EnvdClient {
  /** Host path of the agent's socket, for raw HTTP (proxies). */
  readonly socketPath: string
  /**
   * Hands the agent its env vars and access token (envd's `POST /init`).
   * @throws DriverError when the agent refuses or cannot be reached, TimeoutError
   */
  init(init: AgentInit, options?: InitOptions): Promise<void>
  /** Whether the agent answers envd's `GET /health` within `timeoutMs` (default 2000). */
  healthy(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<boolean>
}

/** What reaching a sandbox's envd through the server takes: its id and, if secured, its token. */
export interface EnvdTarget {
  sandboxId: string
  envdAccessToken?: string | undefined
}

/** A sandbox's agent reached through a sandcell server's envd proxy. */
export interface ProxiedEnvdClient extends EnvdClient {
  readonly sandboxId: string
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

/** How one client reaches its agent, for RPCs and for plain HTTP. */
interface Route extends HttpRoute {
  /** node:http options of the Connect transport. */
  nodeOptions: { agent: HttpAgent | HttpsAgent; socketPath?: string }
  /** Sent with streaming RPCs only. */
  streamHeaders: Record<string, string>
  /** Aborts every RPC and transfer of the client. */
  signal: AbortSignal | undefined
  /** The message of an `unavailable` RPC error, naming what the route knows. */
  unavailable?: (message: string) => string
}

/**
 * Adds the route's headers, the default user and the client's signal to every RPC, and renames
 * an `unavailable` error where the route can say more.
 */
function envdInterceptor(route: Route, user: string): Interceptor {
  const { signal, unavailable } = route
  return (next) => async (req) => {
    for (const [name, value] of Object.entries(route.headers)) {
      req.header.set(name, value)
    }
    if (!req.header.has('authorization')) {
      req.header.set('authorization', basicAuthorization(user))
    }
    if (req.stream) {
      for (const [name, value] of Object.entries(route.streamHeaders)) {
        req.header.set(name, value)
      }
    }
    const joined = signal === undefined ? req.signal : AbortSignal.any([req.signal, signal])
    try {
      return await next({ ...req, signal: joined })
    } catch (err) {
      if (
        unavailable !== undefined &&
        err instanceof ConnectError &&
        err.code === Code.Unavailable
      ) {
        const named = new ConnectError(
          unavailable(err.rawMessage),
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

function createEnvdClient(route: Route, options: EnvdClientOptions): EnvdClient {
  const user = options.user ?? defaultUser
  const transport = createConnectTransport({
    httpVersion: '1.1',
    baseUrl: route.baseUrl,
    useBinaryFormat: true,
    nodeOptions: route.nodeOptions,
    interceptors: [envdInterceptor(route, user)],
  })
  return {
    process: createClient(Process, transport),
    filesystem: createClient(Filesystem, transport),
    uploadFile: (path, data, transfer = {}) =>
      uploadFile(route, path, data, {
        user: transfer.user ?? user,
        signals: [transfer.signal, route.signal],
      }),
    downloadFile: (path, transfer = {}) =>
      downloadFile(route, path, {
        user: transfer.user ?? user,
        signals: [transfer.signal, route.signal],
      }),
    uploadArchive: (path, data, archive = {}) =>
      uploadArchive(route, path, data, {
        user: archive.user ?? user,
        mode: archive.mode,
        signals: [archive.signal, route.signal],
      }),
    close: () => {
      route.nodeOptions.agent.destroy()
      // Destroying only drops sockets: there is nothing a caller could do about a failure.
      route.dispatcher.destroy().catch(() => undefined)
    },
  }
}

/** A client of the agent listening on `socketPath` (the host side). */
export function createAgentConnection(
  socketPath: string,
  options: EnvdClientOptions = {},
): AgentConnection {
  const route: Route = {
    // The host name is unused on a Unix socket but must make a valid URL.
    baseUrl: 'http://sandbox',
    nodeOptions: {
      socketPath,
      agent: new HttpAgent({ keepAlive: true, maxSockets: maxConnections }),
    },
    dispatcher: new UndiciAgent({ connect: { socketPath }, connections: maxConnections }),
    headers: {},
    streamHeaders: {},
    signal: undefined,
    context: { serverUrl: `unix:${socketPath}`, agentSocket: socketPath },
  }
  return {
    ...createEnvdClient(route, options),
    socketPath,
    init: (init, initOptions) => initAgent(route, init, initOptions),
    healthy: (health = {}) =>
      checkHealth(route, { timeoutMs: health.timeoutMs ?? 2000, signal: health.signal }),
  }
}

/**
 * A client of a sandbox's agent through the sandcell server at `serverUrl` (a path prefix is
 * kept): every request carries the routing headers and the sandbox's token.
 * @throws InvalidArgumentError when the sandbox id is empty.
 */
export function createProxiedEnvdClient(
  serverUrl: string,
  target: EnvdTarget,
  options: EnvdClientOptions & { signal?: AbortSignal | undefined } = {},
): ProxiedEnvdClient {
  if (target.sandboxId === '') {
    throw new InvalidArgumentError('a sandbox id is required')
  }
  const baseUrl = serverUrl.replace(/\/$/, '')
  const route: Route = {
    baseUrl,
    nodeOptions: {
      agent: baseUrl.startsWith('https:')
        ? new HttpsAgent({ keepAlive: true, maxSockets: maxConnections })
        : new HttpAgent({ keepAlive: true, maxSockets: maxConnections }),
    },
    dispatcher: new UndiciAgent({ connections: maxConnections }),
    headers: routingHeaders(target),
    // Proxies between the client and the server may cut a stream that is silent for long.
    streamHeaders: { [envdHeaders.keepalivePingInterval]: String(keepaliveIntervalS) },
    signal: options.signal,
    context: { serverUrl: baseUrl, sandboxId: target.sandboxId },
    unavailable: (message) =>
      `sandbox ${target.sandboxId} is unavailable through ${baseUrl}: ${message}`,
  }
  return { ...createEnvdClient(route, options), sandboxId: target.sandboxId }
}
