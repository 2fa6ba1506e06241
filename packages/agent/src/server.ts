/**
 * The agent's HTTP server: listeners, the access-token gate, and the cheap routes (/health, /init,
 * /envs). Everything else (Connect services, /files, /metrics) lives in routes.ts, which is
 * imported only after the listeners are up: startup is on every cold sandbox's critical path.
 */
import { chmodSync, lstatSync, realpathSync, unlinkSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { ConfigError, InvalidArgumentError, type Logger } from '@sandcell/shared'
import type { AgentContext } from './agent-context.js'
import { createAgentState, type AgentState } from './agent-state.js'
import type { AgentConfig, ListenSpec } from './config.js'
import { isAuthorized, unauthorizedMessage } from './http/access-token.js'
import { discardBody, sendEmpty, sendError, sendJson } from './http/http-response.js'
import { handleEnvs, handleInit } from './http/init.js'
import { createUserDirectory } from './process/users.js'
import type { AgentRoutes } from './routes.js'

/** A listener as bound (a TCP port 0 becomes the port the OS picked). */
export type BoundListener = ListenSpec

/** Dependencies of {@link createAgentServer}. */
export interface AgentServerOptions {
  config: AgentConfig
  log: Logger
}

/** The running agent. `close()` (or `await using`) stops it and kills every process it started. */
export interface AgentServer extends AsyncDisposable {
  readonly state: AgentState
  /**
   * Binds every listener; resolves when all listen.
   * @throws Error naming the listener that could not be bound.
   */
  listen(): Promise<BoundListener[]>
  /** Loads the full handler now instead of on the first request that needs it. */
  warm(): Promise<void>
  /** Stops listening, kills process groups, closes watchers and connections. Idempotent. */
  close(): Promise<void>
}

/** Most of an unauthorized request's body read before answering 401 (then the answer is sent anyway). */
const maxDiscardBytes = 1024 * 1024

/** How long shutdown waits for killed processes to be reaped. */
const shutdownWaitMs = 2000

/**
 * Creates the agent server (nothing is bound until `listen()`).
 * @throws ConfigError when the root does not exist or the access token file is unusable.
 */
export function createAgentServer(options: AgentServerOptions): AgentServer {
  const { config } = options
  const log = options.log.child({ component: 'agent.server' })
  let root: string
  try {
    root = realpathSync(config.root)
  } catch (err) {
    throw new ConfigError(`--root ${config.root} does not exist`, { cause: err })
  }
  const state = createAgentState({ accessTokenFile: config.accessTokenFile })
  const context: AgentContext = {
    config,
    log: options.log,
    state,
    users: createUserDirectory(root),
    root,
  }

  let routes: Promise<AgentRoutes> | undefined
  const loadRoutes = (): Promise<AgentRoutes> => {
    if (routes === undefined) {
      const started = performance.now()
      routes = import('./routes.js').then((module) => {
        const loaded = module.createAgentRoutes(context)
        log.debug(
          { loadMs: Math.round(performance.now() - started), atMs: Math.round(performance.now()) },
          'services loaded',
        )
        return loaded
      })
    }
    return routes
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      route(req, res)
    } catch (err) {
      sendError(res, err, log)
    }
  }

  const route = (req: IncomingMessage, res: ServerResponse): void => {
    let url: URL
    try {
      url = new URL(req.url ?? '/', 'http://agent')
    } catch (err) {
      throw new InvalidArgumentError(`invalid request URL ${JSON.stringify(req.url)}`, {
        cause: err,
      })
    }
    const method = req.method ?? 'GET'
    if (method === 'GET' && url.pathname === '/health') {
      sendEmpty(res)
      return
    }
    // /files checks the token itself: it also accepts signed URLs instead.
    const token = req.headers['x-access-token']
    if (
      url.pathname !== '/files' &&
      !isAuthorized(state.accessToken, Array.isArray(token) ? token[0] : token)
    ) {
      log.warn({ method, path: url.pathname }, 'request without a valid access token')
      discardBody(req, maxDiscardBytes)
        .then(() => sendJson(res, 401, { code: 401, message: unauthorizedMessage }))
        .catch((err: unknown) => log.error({ err }, 'cannot answer 401'))
      return
    }
    if (method === 'POST' && url.pathname === '/init') {
      handleInit(req, res, state, log).catch((err: unknown) => sendError(res, err, log))
      return
    }
    if (method === 'GET' && url.pathname === '/envs') {
      handleEnvs(res, state)
      return
    }
    loadRoutes()
      .then((loaded) => loaded.handle(req, res, url))
      .catch((err: unknown) => sendError(res, err, log))
  }

  const servers: { spec: ListenSpec; server: Server }[] = []
  let closing: Promise<void> | undefined

  const listenOne = async (spec: ListenSpec): Promise<BoundListener> => {
    // No request timeout: uploads, StreamInput and process streams may run for hours.
    const server = createServer({ requestTimeout: 0 }, onRequest)
    server.on('clientError', (err, socket) => {
      log.debug({ err }, 'bad client connection')
      socket.destroy()
    })
    servers.push({ spec, server })
    if (spec.kind === 'unix') {
      removeStaleSocket(spec.path)
      await listenOn(server, spec.path)
      chmodSync(spec.path, 0o600)
      return spec
    }
    await listenOn(server, spec.port, spec.host)
    const address = server.address() as AddressInfo
    return { kind: 'tcp', host: spec.host, port: address.port }
  }

  const close = async (): Promise<void> => {
    closing ??= (async () => {
      const stopped = servers.map(
        ({ server }) => new Promise<void>((resolve) => server.close(() => resolve())),
      )
      if (routes !== undefined) {
        try {
          await (await routes).shutdown(shutdownWaitMs)
        } catch (err) {
          log.error({ err }, 'shutdown of processes and watchers failed')
        }
      }
      for (const { server } of servers) {
        server.closeAllConnections()
      }
      await Promise.all(stopped)
      for (const { spec } of servers) {
        if (spec.kind === 'unix') {
          removeStaleSocket(spec.path)
        }
      }
    })()
    return closing
  }

  return {
    state,
    async listen() {
      const bound: BoundListener[] = []
      for (const spec of config.listen) {
        try {
          bound.push(await listenOne(spec))
        } catch (err) {
          await close()
          const where = spec.kind === 'unix' ? `unix:${spec.path}` : `tcp:${spec.host}:${spec.port}`
          throw new Error(`cannot listen on ${where}: ${(err as Error).message}`, { cause: err })
        }
      }
      return bound
    },
    async warm() {
      await loadRoutes()
      // One real RPC through our own socket compiles the cold request path (~30 ms) now.
      const socket = servers.find(({ spec }) => spec.kind === 'unix')?.spec
      if (socket?.kind === 'unix') {
        await selfRequest(socket.path, state.accessToken).catch((err: unknown) =>
          log.debug({ err }, 'warm-up request failed'),
        )
      }
    },
    close,
    [Symbol.asyncDispose]: close,
  }
}

/**
 * POST /process.Process/List to ourselves over the Unix socket (the warm-up request), written
 * as raw HTTP: Node's HTTP client would spend more compiling its own path (host-name checks)
 * than the server path this is meant to compile.
 */
function selfRequest(socketPath: string, accessToken: string | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath)
    socket.once('error', reject)
    socket.once('close', () => resolve())
    socket.resume()
    const token = accessToken === undefined ? '' : `x-access-token: ${accessToken}\r\n`
    socket.end(
      'POST /process.Process/List HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n' +
        `${token}content-length: 2\r\nconnection: close\r\n\r\n{}`,
    )
  })
}

function listenOn(server: Server, pathOrPort: string | number, host?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    const onListening = (): void => {
      server.off('error', reject)
      resolve()
    }
    if (typeof pathOrPort === 'string') {
      // bind() happens inside listen(), synchronously: this umask makes the socket 0600 from its
      // first moment and is restored before anything else can run.
      const umask = process.umask(0o177)
      try {
        server.listen(pathOrPort, onListening)
      } finally {
        process.umask(umask)
      }
    } else {
      server.listen(pathOrPort, host, onListening)
    }
  })
}

/** Removes a leftover socket file (a previous agent's); anything else at the path is an error. */
function removeStaleSocket(path: string): void {
  let isSocket: boolean
  try {
    isSocket = lstatSync(path).isSocket()
  } catch {
    return
  }
  if (!isSocket) {
    throw new Error(`${path} exists and is not a socket`)
  }
  unlinkSync(path)
}
