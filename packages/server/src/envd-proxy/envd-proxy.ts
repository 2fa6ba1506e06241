/**
 * The sandbox proxy: forwards the e2b SDK's envd traffic (Connect RPCs, `/files`, `/health`)
 * from the server's one URL to each sandbox agent's Unix socket, and requests for any other
 * port to that port on the sandbox's network address (HTTP, streams and WebSocket upgrades),
 * streaming both ways.
 */
import { timingSafeEqual } from 'node:crypto'
import {
  Agent,
  STATUS_CODES,
  request as httpRequest,
  type IncomingMessage,
  type RequestOptions,
  type ServerResponse,
} from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { Duplex } from 'node:stream'
import { errorMessage, type Logger } from '@sandcell/shared'
import type { EnvdRegistry, EnvdTarget } from './envd-registry.js'
import { createEnvdRouter, envdPort, type EnvdRoute } from './envd-router.js'
import { forwardedRequestHeaders, forwardedResponseHeaders } from './forward-headers.js'
import {
  portNotOpen,
  renderErrorBody,
  sandboxNotFound,
  trafficTokenHeader,
  trafficTokenInvalid,
  trafficTokenMissing,
  type SandboxErrorBody,
} from './sandbox-errors.js'

export { envdPort, type EnvdRoute } from './envd-router.js'

/** One finished proxied request, for metrics. */
export interface EnvdRequestSample {
  /** The sandbox the request named; undefined when it named none usable (400/401). */
  sandboxId: string | undefined
  /** The status sent to the client; 499 when the client went away before any answer. */
  status: number
  /** Request body bytes read from the client. */
  bytesIn: number
  /** Response body bytes sent towards the client. */
  bytesOut: number
  /** From routing to the end of the response (or the client's disconnect). */
  durationMs: number
}

/** Receives one sample per request (the server turns them into Prometheus counters). */
export interface EnvdProxyMetrics {
  onRequest(sample: EnvdRequestSample): void
}

/** Dependencies of {@link createEnvdProxy}. */
export interface EnvdProxyOptions {
  registry: EnvdRegistry
  log: Logger
  /** Base domain of sandbox host names, e.g. `sandcell.local` for `49983-<id>.sandcell.local`. */
  domain: string
  metrics?: EnvdProxyMetrics
  /**
   * Idle keep-alive connections kept per sandbox agent socket (connections in use are not
   * capped: a process stream may hold one for hours).
   * @default 16
   */
  maxIdleSocketsPerSandbox?: number
}

/** The proxy; the server calls `route` for every request and `handle` for the ones it claims. */
export interface EnvdProxy {
  /**
   * Whether `req` is for a sandbox: `E2b-Sandbox-Id` header (+ `E2b-Sandbox-Port`, default
   * 49983), a `PORT-SANDBOXID.<domain>` or `PORT-SANDBOXID.localhost` Host, or a signed
   * `/files` URL. Undefined means the API's. Reads headers and the URL only.
   */
  route(req: IncomingMessage): EnvdRoute | undefined
  /**
   * Answers a routed request: forwards it to the sandbox's agent (envd's port) or to the port
   * on the sandbox's network address, or answers 502 (sandbox unknown or paused, port not
   * open), 403 (traffic token), 400 or 401 itself. Never throws.
   */
  handle(req: IncomingMessage, res: ServerResponse, route: EnvdRoute): void
  /** The same for a request to upgrade the connection (WebSocket); the socket is the client's. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, route: EnvdRoute): void
  /** Destroys the pooled upstream connections (in-flight streams end). */
  close(): Promise<void>
}

/** Where a request goes: the agent's socket, or a TCP port of the sandbox. */
type Upstream =
  { kind: 'agent'; socketPath: string } | { kind: 'port'; host: string; port: number; tls: boolean }

/** A request the proxy may forward, after routing, lookup and the traffic-token check. */
type Decision =
  | { kind: 'forward'; target: EnvdTarget; upstream: Upstream; resume: boolean }
  | { kind: 'refuse'; sandboxId: string | undefined; status: number; body: SandboxErrorBody }

/** Paths of the agent that only the server itself calls (through the socket, not the proxy). */
const internalEnvdPaths = new Set(['/init'])

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

/**
 * Creates the proxy. Bodies are never buffered and streams never time out (the agent sends
 * keepalives); a client that goes away aborts the upstream request, so the agent (or the
 * sandbox's server) sees its stream end. HTTP/1.1 upstream, over keep-alive pools.
 */
export function createEnvdProxy(options: EnvdProxyOptions): EnvdProxy {
  const { registry, metrics } = options
  const log = options.log.child({ component: 'server.envd-proxy' })
  const route = createEnvdRouter({ registry, domain: options.domain })
  // One Agent pools per socket path (or host and port) by itself and drops a pool when its last
  // socket closes, so sandboxes that come and go leave nothing behind.
  const poolOptions = {
    keepAlive: true,
    maxFreeSockets: options.maxIdleSocketsPerSandbox ?? 16,
    scheduling: 'lifo' as const,
  }
  const agent = new Agent(poolOptions)
  // A sandbox's TLS service has whatever certificate its owner gave it: E2B's proxy does not
  // check it either (the client's trust is in this server, not in the sandbox).
  const tlsAgent = new HttpsAgent({ ...poolOptions, rejectUnauthorized: false })

  const decide = (req: IncomingMessage, envdRoute: EnvdRoute): Decision => {
    if (envdRoute.kind === 'refused') {
      return {
        kind: 'refuse',
        sandboxId: undefined,
        status: envdRoute.status,
        body: { code: envdRoute.status, message: envdRoute.message },
      }
    }
    const { sandboxId, port } = envdRoute
    const target = registry.get(sandboxId)
    if (target === undefined) {
      return { kind: 'refuse', sandboxId, status: 502, body: sandboxNotFound(sandboxId) }
    }
    if (target.state === 'paused' && !target.autoResume) {
      return {
        kind: 'refuse',
        sandboxId,
        status: 502,
        body: {
          code: 502,
          sandboxId,
          message: `sandbox ${sandboxId} is paused; resume it with Sandbox.connect()`,
        },
      }
    }
    const resume = target.state === 'paused'
    if (port === envdPort) {
      const path = (req.url ?? '/').split('?')[0] ?? '/'
      if (internalEnvdPaths.has(path)) {
        return {
          kind: 'refuse',
          sandboxId,
          status: 403,
          body: { code: 403, sandboxId, message: `${path} is for the server only` },
        }
      }
      return {
        kind: 'forward',
        target,
        resume,
        upstream: { kind: 'agent', socketPath: target.socketPath },
      }
    }
    if (target.trafficAccessToken !== undefined) {
      const given = req.headers[trafficTokenHeader]
      if (given === undefined) {
        return { kind: 'refuse', sandboxId, status: 403, body: trafficTokenMissing(sandboxId) }
      }
      if (typeof given !== 'string' || !sameSecret(given, target.trafficAccessToken)) {
        return { kind: 'refuse', sandboxId, status: 403, body: trafficTokenInvalid(sandboxId) }
      }
    }
    if (target.portAddress === undefined) {
      return { kind: 'refuse', sandboxId, status: 502, body: portNotOpen(sandboxId, port) }
    }
    return {
      kind: 'forward',
      target,
      resume,
      upstream: {
        kind: 'port',
        host: target.portAddress,
        port,
        tls: target.httpsPorts?.includes(port) ?? false,
      },
    }
  }

  /** The request sent upstream: headers cleaned, Host masked when the sandbox asked for it. */
  const upstreamRequest = (
    req: IncomingMessage,
    target: EnvdTarget,
    upstream: Upstream,
    upgrade: boolean,
  ) => {
    const headers = forwardedRequestHeaders({
      rawHeaders: req.rawHeaders,
      connection: req.headers.connection,
      remoteAddress: req.socket.remoteAddress,
    })
    let outgoing: string[] = headers
    if (upstream.kind === 'port') {
      outgoing = []
      const mask = target.maskRequestHost?.replaceAll('${PORT}', String(upstream.port))
      for (let i = 0; i + 1 < headers.length; i += 2) {
        const name = headers[i] as string
        const value = headers[i + 1] as string
        const lower = name.toLowerCase()
        if (lower === trafficTokenHeader) {
          continue
        }
        if (lower === 'host' && mask !== undefined) {
          outgoing.push('host', mask, 'x-forwarded-host', value)
          continue
        }
        outgoing.push(name, value)
      }
    }
    if (upgrade) {
      outgoing.push('connection', 'upgrade', 'upgrade', String(req.headers.upgrade))
    }
    const common: RequestOptions = {
      method: req.method,
      path: req.url,
      // A flat [name, value, ...] list keeps names' case and repeats; Node takes it as is.
      headers: outgoing,
    }
    if (upstream.kind === 'agent') {
      return httpRequest({
        ...common,
        socketPath: upstream.socketPath,
        agent: upgrade ? false : agent,
      })
    }
    const tcp = { ...common, host: upstream.host, port: upstream.port }
    return upstream.tls
      ? httpsRequest({ ...tcp, agent: upgrade ? false : tlsAgent, rejectUnauthorized: false })
      : httpRequest({ ...tcp, agent: upgrade ? false : agent })
  }

  /** What a failed upstream connection means to the client. */
  const upstreamFailure = (
    sandboxId: string,
    upstream: Upstream,
    err: NodeJS.ErrnoException,
  ): SandboxErrorBody => {
    if (upstream.kind === 'port') {
      // Nothing listens (a reset from the sandbox), or it went away: E2B's "port is not open".
      return portNotOpen(sandboxId, upstream.port)
    }
    const gone = err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
    return {
      code: 502,
      sandboxId,
      message: gone
        ? `sandbox ${sandboxId} is not running: its agent socket is gone (${err.code})`
        : `sandbox ${sandboxId} is not reachable: ${err.message}`,
    }
  }

  const reply = (
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    body: SandboxErrorBody,
  ): number => {
    if (res.headersSent || res.destroyed) {
      res.destroy()
      return 0
    }
    const { contentType, text } = renderErrorBody(req.headers, body)
    const length = Buffer.byteLength(text)
    res.writeHead(status, {
      'content-type': contentType,
      'content-length': length,
      'cache-control': 'no-store',
      // An unread upload is not drained (it may be gigabytes): the connection ends instead.
      ...(req.complete ? {} : { connection: 'close' }),
    })
    res.end(text)
    return length
  }

  /** An answer written straight to an upgrading client's socket, which then closes. */
  const replyRaw = (
    req: IncomingMessage,
    socket: Duplex,
    status: number,
    body: SandboxErrorBody,
  ): void => {
    const { contentType, text } = renderErrorBody(req.headers, body)
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
        `content-type: ${contentType}\r\ncontent-length: ${Buffer.byteLength(text)}\r\n` +
        `cache-control: no-store\r\nconnection: close\r\n\r\n${text}`,
    )
  }

  const observe = (
    res: ServerResponse,
    sandboxId: string | undefined,
    startedMs: number,
    bytes: { in: number; out: number },
  ): void => {
    if (metrics === undefined) {
      return
    }
    res.once('close', () => {
      metrics.onRequest({
        sandboxId,
        status: res.headersSent ? res.statusCode : 499,
        bytesIn: bytes.in,
        bytesOut: bytes.out,
        durationMs: performance.now() - startedMs,
      })
    })
  }

  const refuse = (
    req: IncomingMessage,
    res: ServerResponse,
    sandboxId: string | undefined,
    status: number,
    body: SandboxErrorBody,
    startedMs: number,
  ): void => {
    log.debug({ sandboxId, status, message: body.message }, 'sandbox request refused')
    const bytes = { in: 0, out: 0 }
    observe(res, sandboxId, startedMs, bytes)
    bytes.out = reply(req, res, status, body)
  }

  const forward = (
    req: IncomingMessage,
    res: ServerResponse,
    target: EnvdTarget,
    upstreamTarget: Upstream,
    startedMs: number,
  ): void => {
    const { sandboxId } = target
    const bytes = { in: 0, out: 0 }
    observe(res, sandboxId, startedMs, bytes)
    let upstream
    try {
      upstream = upstreamRequest(req, target, upstreamTarget, false)
    } catch (err) {
      // Node's client refuses a few targets and header values its server let through.
      refuseForwarding(req, res, sandboxId, err)
      return
    }
    let responseComplete = false

    upstream.on('response', (response) => {
      if (res.destroyed) {
        response.destroy()
        return
      }
      const headers = forwardedResponseHeaders(response.rawHeaders, response.headers.connection)
      if (!req.complete) {
        // The sandbox answered before the body ended (an early error): finish with this answer
        // instead of draining the rest of a possibly huge upload.
        headers.push('connection', 'close')
      }
      try {
        res.writeHead(response.statusCode ?? 502, response.statusMessage, headers)
      } catch (err) {
        // The sandbox may be hostile: a status or header Node will not send ends the exchange.
        log.warn({ sandboxId, err }, 'sandbox sent an unusable response head')
        response.destroy()
        bytes.out = reply(req, res, 502, {
          code: 502,
          sandboxId,
          message: `sandbox ${sandboxId} sent an invalid response`,
        })
        return
      }
      if (response.headers['content-length'] === undefined) {
        // A stream: the client sees the headers as soon as the sandbox sends them.
        res.flushHeaders()
      }
      if (metrics !== undefined) {
        response.on('data', (chunk: Buffer) => {
          bytes.out += chunk.length
        })
      }
      response.once('end', () => {
        responseComplete = true
      })
      response.once('close', () => {
        if (!responseComplete) {
          // The sandbox went away mid-response: cut the client off too, so it cannot mistake
          // a truncated body for a whole one.
          res.destroy()
        }
      })
      response.pipe(res)
    })

    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (res.destroyed) {
        return
      }
      if (res.headersSent) {
        log.debug({ sandboxId, err }, 'sandbox connection failed mid-response')
        res.destroy()
        return
      }
      if (upstreamTarget.kind === 'agent') {
        log.warn({ sandboxId, err }, 'sandbox agent unreachable')
      } else {
        log.debug({ sandboxId, port: upstreamTarget.port, err }, 'sandbox port unreachable')
      }
      bytes.out = reply(req, res, 502, upstreamFailure(sandboxId, upstreamTarget, err))
    })

    res.once('close', () => {
      if (!responseComplete || !upstream.writableFinished) {
        // The client went away (or the answer ended before the request did): abort upstream so
        // the sandbox sees the stream end, and keep the half-used connection out of the pool.
        req.unpipe(upstream)
        upstream.destroy()
      }
    })

    if (metrics !== undefined) {
      req.on('data', (chunk: Buffer) => {
        bytes.in += chunk.length
      })
    }
    if (
      req.headers['content-length'] === undefined &&
      req.headers['transfer-encoding'] === undefined
    ) {
      // No body (GET /health, /files downloads): send the request now, not after req's 'end'.
      upstream.end()
      req.resume()
    } else {
      req.pipe(upstream)
    }
  }

  /** Relays an upgrade: the sandbox's 101 and then raw bytes both ways, or its refusal. */
  const forwardUpgrade = (
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    target: EnvdTarget,
    upstreamTarget: Upstream,
  ): void => {
    const { sandboxId } = target
    let upstream
    try {
      upstream = upstreamRequest(req, target, upstreamTarget, true)
    } catch (err) {
      replyRaw(req, socket, 400, {
        code: 400,
        message: `request cannot be forwarded: ${errorMessage(err)}`,
      })
      return
    }
    const writeHead = (status: number, message: string, rawHeaders: readonly string[]): string => {
      let text = `HTTP/1.1 ${status} ${message}\r\n`
      for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
        text += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`
      }
      return `${text}\r\n`
    }
    socket.once('error', () => upstream.destroy())
    socket.once('close', () => upstream.destroy())
    upstream.once('upgrade', (response, upstreamSocket, upstreamHead) => {
      upstreamSocket.once('error', () => socket.destroy())
      socket.once('error', () => upstreamSocket.destroy())
      socket.write(
        writeHead(101, response.statusMessage ?? 'Switching Protocols', response.rawHeaders),
      )
      if (upstreamHead.length > 0) {
        socket.write(upstreamHead)
      }
      if (head.length > 0) {
        upstreamSocket.write(head)
      }
      upstreamSocket.pipe(socket)
      socket.pipe(upstreamSocket)
    })
    upstream.once('response', (response) => {
      // The sandbox declined the upgrade: its answer goes to the client as is.
      const headers = forwardedResponseHeaders(response.rawHeaders, response.headers.connection)
      socket.write(
        // Without a length, the body ends where the connection does.
        writeHead(response.statusCode ?? 502, response.statusMessage ?? '', [
          ...headers,
          'connection',
          'close',
        ]),
      )
      response.pipe(socket)
    })
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      if (!socket.destroyed) {
        replyRaw(req, socket, 502, upstreamFailure(sandboxId, upstreamTarget, err))
      }
    })
    upstream.end()
  }

  const refuseForwarding = (
    req: IncomingMessage,
    res: ServerResponse,
    sandboxId: string,
    err: unknown,
  ): void => {
    log.debug({ sandboxId, err }, 'request cannot be forwarded')
    reply(req, res, 400, {
      code: 400,
      message: `request cannot be forwarded: ${err instanceof Error ? err.message : String(err)}`,
    })
  }

  /** Runs `then` once the sandbox runs (resumed first for autoResume), else refuses. */
  const whenRunning = (
    decision: Extract<Decision, { kind: 'forward' }>,
    then: () => void,
    fail: (body: SandboxErrorBody) => void,
  ): void => {
    if (!decision.resume) {
      then()
      return
    }
    const { sandboxId } = decision.target
    // autoResume: the request waits (its body unread) while the sandbox wakes.
    registry.resume(sandboxId).then(then, (err: unknown) =>
      fail({
        code: 502,
        sandboxId,
        message: `sandbox ${sandboxId} could not be resumed: ${errorMessage(err)}`,
      }),
    )
  }

  return {
    route,
    handle(req, res, envdRoute) {
      const startedMs = performance.now()
      try {
        const decision = decide(req, envdRoute)
        if (decision.kind === 'refuse') {
          refuse(req, res, decision.sandboxId, decision.status, decision.body, startedMs)
          return
        }
        whenRunning(
          decision,
          () => forward(req, res, decision.target, decision.upstream, startedMs),
          (body) => refuse(req, res, decision.target.sandboxId, 502, body, startedMs),
        )
      } catch (err) {
        log.error({ err }, 'sandbox proxy failed')
        reply(req, res, 500, { code: 500, message: 'sandbox proxy failed' })
      }
    },
    handleUpgrade(req, socket, head, envdRoute) {
      try {
        const decision = decide(req, envdRoute)
        if (decision.kind === 'refuse') {
          replyRaw(req, socket, decision.status, decision.body)
          return
        }
        whenRunning(
          decision,
          () => forwardUpgrade(req, socket, head, decision.target, decision.upstream),
          (body) => replyRaw(req, socket, 502, body),
        )
      } catch (err) {
        log.error({ err }, 'sandbox proxy failed')
        socket.destroy()
      }
    },
    close() {
      agent.destroy()
      tlsAgent.destroy()
      return Promise.resolve()
    },
  }
}
