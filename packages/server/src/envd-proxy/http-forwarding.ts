/**
 * One proxied HTTP exchange, streamed both ways: the request to the sandbox, its answer back to
 * the client (or the proxy's own error answer), and one metrics sample when the exchange ends.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from '@sandcell/shared'
import { forwardedResponseHeaders } from './forward-headers.js'
import type { Upstream } from './proxy-decision.js'
import type { ProxyTarget } from './proxy-target.js'
import {
  cannotForward,
  invalidResponse,
  sendError,
  type SandboxErrorBody,
} from './sandbox-errors.js'
import { upstreamFailure, type UpstreamConnector } from './upstream-request.js'

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

/** Answers HTTP requests the proxy has decided on; never throws once the answer has begun. */
export interface HttpForwarder {
  /** Streams `req` to `upstream` and the sandbox's answer back to `res`. */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ProxyTarget,
    upstream: Upstream,
    startedMs: number,
  ): void
  /** Answers `req` with the proxy's own error. */
  refuse(
    req: IncomingMessage,
    res: ServerResponse,
    sandboxId: string | undefined,
    status: number,
    body: SandboxErrorBody,
    startedMs: number,
  ): void
}

/** Dependencies of {@link createHttpForwarder}. */
export interface HttpForwarderOptions {
  log: Logger
  connector: UpstreamConnector
  metrics: EnvdProxyMetrics | undefined
}

export function createHttpForwarder(options: HttpForwarderOptions): HttpForwarder {
  const { log, connector, metrics } = options

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

  const forward: HttpForwarder['forward'] = (req, res, target, upstreamTarget, startedMs) => {
    const { sandboxId } = target
    const bytes = { in: 0, out: 0 }
    observe(res, sandboxId, startedMs, bytes)
    let upstream
    try {
      upstream = connector.open(req, target, upstreamTarget, false)
    } catch (err) {
      log.debug({ sandboxId, err }, 'request cannot be forwarded')
      sendError(req, res, 400, cannotForward(err))
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
        bytes.out = sendError(req, res, 502, invalidResponse(sandboxId))
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
      bytes.out = sendError(req, res, 502, upstreamFailure(sandboxId, upstreamTarget, err))
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

  return {
    forward,
    refuse(req, res, sandboxId, status, body, startedMs) {
      log.debug({ sandboxId, status, message: body.message }, 'sandbox request refused')
      const bytes = { in: 0, out: 0 }
      observe(res, sandboxId, startedMs, bytes)
      bytes.out = sendError(req, res, status, body)
    },
  }
}
