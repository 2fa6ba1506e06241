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

type Forward = Extract<ProxyDecision, { kind: 'forward' }>

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

  /**
   * Runs `then` with a decision to forward; a paused sandbox with autoResume is resumed first
   * and the request decided again (once: a sandbox paused again meanwhile is refused).
   */
  const whenRunning = (
    req: IncomingMessage,
    envdRoute: EnvdRoute,
    decision: ProxyDecision,
    then: (decision: Forward) => void,
    refuse: (sandboxId: string | undefined, status: number, body: SandboxErrorBody) => void,
    resumed = false,
  ): void => {
    if (decision.kind === 'forward') {
      then(decision)
      return
    }
    if (decision.kind === 'refuse') {
      refuse(decision.sandboxId, decision.status, decision.body)
      return
    }
    const { sandboxId } = decision.target
    if (resumed) {
      refuse(sandboxId, 502, resumeFailed(sandboxId, 'it was paused again meanwhile'))
      return
    }
    // autoResume: the request waits (its body unread) while the sandbox wakes.
    registry
      .resume(sandboxId)
      .then(
        () => whenRunning(req, envdRoute, decide(req, envdRoute, registry), then, refuse, true),
        (err: unknown) => refuse(sandboxId, 502, resumeFailed(sandboxId, err)),
      )
      .catch((err: unknown) => {
        log.error({ err, sandboxId }, 'sandbox proxy failed after a resume')
        refuse(sandboxId, 500, { code: 500, message: 'sandbox proxy failed' })
      })
  }

  return {
    route,
    handle(req, res, envdRoute) {
      const startedMs = performance.now()
      try {
        whenRunning(
          req,
          envdRoute,
          decide(req, envdRoute, registry),
          (forward) => http.forward(req, res, forward.target, forward.upstream, startedMs),
          (sandboxId, status, body) => http.refuse(req, res, sandboxId, status, body, startedMs),
        )
      } catch (err) {
        log.error({ err }, 'sandbox proxy failed')
        sendError(req, res, 500, { code: 500, message: 'sandbox proxy failed' })
      }
    },
    handleUpgrade(req, socket, head, envdRoute) {
      try {
        whenRunning(
          req,
          envdRoute,
          decide(req, envdRoute, registry),
          (forward) =>
            forwardUpgrade(connector, req, socket, head, forward.target, forward.upstream),
          (_sandboxId, status, body) => sendRawError(req, socket, status, body),
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
