/**
 * The envd proxy: forwards the e2b SDK's envd traffic (Connect RPCs, `/files`, `/health`) from
 * the server's one URL to each sandbox agent's Unix socket, streaming both ways.
 */
import { errorMessage } from '@sandcell/shared'
import { Agent, request, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Logger } from '@sandcell/shared'
import type { EnvdRegistry, EnvdTarget } from './envd-registry.js'
import { createEnvdRouter, envdPort, type EnvdRoute } from './envd-router.js'
import { forwardedRequestHeaders, forwardedResponseHeaders } from './forward-headers.js'

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
   * Answers a routed request: forwards it to the sandbox's agent, or answers 502 (sandbox
   * unknown, paused, unreachable, or a port other than envd's), 400 or 401 itself. Never throws.
   */
  handle(req: IncomingMessage, res: ServerResponse, route: EnvdRoute): void
  /** Destroys the pooled agent connections (in-flight streams end). */
  close(): Promise<void>
}

/**
 * Creates the proxy. Bodies are never buffered and streams never time out (the agent sends
 * keepalives); a client that goes away aborts the upstream request, so the agent sees its stream
 * end. HTTP/1.1 to the agent, over one keep-alive pool per socket path.
 */
export function createEnvdProxy(options: EnvdProxyOptions): EnvdProxy {
  const { registry, metrics } = options
  const log = options.log.child({ component: 'server.envd-proxy' })
  const route = createEnvdRouter({ registry, domain: options.domain })
  // One Agent pools per socket path by itself (the path is part of its pool key) and drops a
  // pool when its last socket closes, so sandboxes that come and go leave nothing behind.
  const agent = new Agent({
    keepAlive: true,
    maxFreeSockets: options.maxIdleSocketsPerSandbox ?? 16,
    scheduling: 'lifo',
  })

  const reply = (
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    body: Record<string, unknown>,
  ): number => {
    if (res.headersSent || res.destroyed) {
      res.destroy()
      return 0
    }
    const text = JSON.stringify(body)
    const length = Buffer.byteLength(text)
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': length,
      'cache-control': 'no-store',
      // An unread upload is not drained (it may be gigabytes): the connection ends instead.
      ...(req.complete ? {} : { connection: 'close' }),
    })
    res.end(text)
    return length
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
    message: string,
    startedMs: number,
  ): void => {
    log.debug({ sandboxId, status, message }, 'envd request refused')
    const bytes = { in: 0, out: 0 }
    observe(res, sandboxId, startedMs, bytes)
    bytes.out = reply(req, res, status, { code: status, message, sandboxId })
  }

  const forward = (
    req: IncomingMessage,
    res: ServerResponse,
    target: EnvdTarget,
    startedMs: number,
  ): void => {
    const { sandboxId } = target
    const bytes = { in: 0, out: 0 }
    observe(res, sandboxId, startedMs, bytes)
    let upstream
    try {
      upstream = request({
        socketPath: target.socketPath,
        method: req.method,
        path: req.url,
        headers: forwardedRequestHeaders({
          rawHeaders: req.rawHeaders,
          connection: req.headers.connection,
          remoteAddress: req.socket.remoteAddress,
        }),
        agent,
      })
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
        // The agent answered before the body ended (an early error): finish with this answer
        // instead of draining the rest of a possibly huge upload.
        headers.push('connection', 'close')
      }
      try {
        res.writeHead(response.statusCode ?? 502, response.statusMessage, headers)
      } catch (err) {
        // The agent runs inside the sandbox and may be hostile: a status or header Node will
        // not send ends the exchange.
        log.warn({ sandboxId, err }, 'sandbox agent sent an unusable response head')
        response.destroy()
        bytes.out = reply(req, res, 502, {
          code: 502,
          sandboxId,
          message: `sandbox ${sandboxId} sent an invalid response`,
        })
        return
      }
      if (response.headers['content-length'] === undefined) {
        // A stream: the client sees the headers as soon as the agent sends them.
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
          // The agent (or its sandbox) went away mid-response: cut the client off too, so it
          // cannot mistake a truncated body for a whole one.
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
      const gone = err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
      log.warn({ sandboxId, err }, 'sandbox agent unreachable')
      bytes.out = reply(req, res, 502, {
        code: 502,
        sandboxId,
        message: gone
          ? `sandbox ${sandboxId} is not running: its agent socket is gone (${err.code})`
          : `sandbox ${sandboxId} is not reachable: ${err.message}`,
      })
    })

    res.once('close', () => {
      if (!responseComplete || !upstream.writableFinished) {
        // The client went away (or the answer ended before the request did): abort upstream so
        // the agent sees the stream end, and keep the half-used connection out of the pool.
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

  return {
    route,
    handle(req, res, envdRoute) {
      const startedMs = performance.now()
      try {
        if (envdRoute.kind === 'refused') {
          refuse(req, res, undefined, envdRoute.status, envdRoute.message, startedMs)
          return
        }
        const { sandboxId } = envdRoute
        const target = registry.get(sandboxId)
        if (target === undefined) {
          refuse(
            req,
            res,
            sandboxId,
            502,
            `sandbox ${sandboxId} is not running or does not exist`,
            startedMs,
          )
          return
        }
        if (target.state === 'paused' && !target.autoResume) {
          refuse(
            req,
            res,
            sandboxId,
            502,
            `sandbox ${sandboxId} is paused; resume it with Sandbox.connect()`,
            startedMs,
          )
          return
        }
        if (envdRoute.port !== envdPort) {
          refuse(
            req,
            res,
            sandboxId,
            502,
            `sandbox ${sandboxId} port ${envdRoute.port} is not reachable: sandcell forwards only ` +
              `envd's port ${envdPort} so far`,
            startedMs,
          )
          return
        }
        if (target.state === 'paused') {
          // autoResume: the request waits (its body unread) while the sandbox wakes.
          registry.resume(sandboxId).then(
            () => forward(req, res, target, startedMs),
            (err: unknown) =>
              refuse(
                req,
                res,
                sandboxId,
                502,
                `sandbox ${sandboxId} could not be resumed: ${errorMessage(err)}`,
                startedMs,
              ),
          )
          return
        }
        forward(req, res, target, startedMs)
      } catch (err) {
        log.error({ err }, 'envd proxy failed')
        reply(req, res, 500, { code: 500, message: 'envd proxy failed' })
      }
    },
    close() {
      agent.destroy()
      return Promise.resolve()
    },
  }
}
