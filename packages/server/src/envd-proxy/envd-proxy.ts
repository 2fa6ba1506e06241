/**
 * The sandbox proxy: forwards the e2b SDK's envd traffic (Connect RPCs, `/files`, `/health`)
 * from the server's one URL to each sandbox agent's Unix socket, and requests for any other
 * port to that port on the sandbox's network address (HTTP, streams and WebSocket upgrades),
 * streaming both ways. This file ties the parts together: routing (envd-router.ts), the
 * decision (proxy-decision.ts), autoResume, and forwarding (http- and upgrade-forwarding.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from '@sandcell/shared'
import { createEnvdRouter, type EnvdRoute } from './envd-router.js'
import { createHttpForwarder, type EnvdProxyMetrics } from './http-forwarding.js'
import { decide, type ProxyDecision } from './proxy-decision.js'
import type { ProxyRegistry } from './proxy-target.js'
import { resumeFailed, sendError, sendRawError, type SandboxErrorBody } from './sandbox-errors.js'
import { forwardUpgrade } from './upgrade-forwarding.js'
import { createUpstreamConnector } from './upstream-request.js'

export { envdPort, type EnvdRoute } from './envd-router.js'
export type { EnvdProxyMetrics, EnvdRequestSample } from './http-forwarding.js'

/** Dependencies of {@link createEnvdProxy}. */
export interface EnvdProxyOptions {
  registry: ProxyRegistry
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

/**
 * Creates the proxy. Bodies are never buffered and streams never time out (the agent sends
 * keepalives); a client that goes away aborts the upstream request, so the agent (or the
 * sandbox's server) sees its stream end. HTTP/1.1 upstream, over keep-alive pools.
 */
export function createEnvdProxy(options: EnvdProxyOptions): EnvdProxy {
  const { registry } = options
  const log = options.log.child({ component: 'server.envd-proxy' })
  const route = createEnvdRouter({ registry, domain: options.domain })
  const connector = createUpstreamConnector({
    maxIdleSockets: options.maxIdleSocketsPerSandbox ?? 16,
  })
  const http = createHttpForwarder({ log, connector, metrics: options.metrics })

  /** Runs `then` once the sandbox runs (resumed first for autoResume), else refuses. */
  const whenRunning = (
    decision: Extract<ProxyDecision, { kind: 'forward' }>,
    then: () => void,
    fail: (body: SandboxErrorBody) => void,
  ): void => {
    if (!decision.resume) {
      then()
      return
    }
    const { sandboxId } = decision.target
    // autoResume: the request waits (its body unread) while the sandbox wakes.
    registry.resume(sandboxId).then(then, (err: unknown) => fail(resumeFailed(sandboxId, err)))
  }

  return {
    route,
    handle(req, res, envdRoute) {
      const startedMs = performance.now()
      try {
        const decision = decide(req, envdRoute, registry)
        if (decision.kind === 'refuse') {
          http.refuse(req, res, decision.sandboxId, decision.status, decision.body, startedMs)
          return
        }
        whenRunning(
          decision,
          () => http.forward(req, res, decision.target, decision.upstream, startedMs),
          (body) => http.refuse(req, res, decision.target.sandboxId, 502, body, startedMs),
        )
      } catch (err) {
        log.error({ err }, 'sandbox proxy failed')
        sendError(req, res, 500, { code: 500, message: 'sandbox proxy failed' })
      }
    },
    handleUpgrade(req, socket, head, envdRoute) {
      try {
        const decision = decide(req, envdRoute, registry)
        if (decision.kind === 'refuse') {
          sendRawError(req, socket, decision.status, decision.body)
          return
        }
        whenRunning(
          decision,
          () => forwardUpgrade(connector, req, socket, head, decision.target, decision.upstream),
          (body) => sendRawError(req, socket, 502, body),
        )
      } catch (err) {
        log.error({ err }, 'sandbox proxy failed')
        socket.destroy()
      }
    },
    close() {
      connector.close()
      return Promise.resolve()
    },
  }
}
