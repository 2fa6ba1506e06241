/**
 * The proxy's side towards a sandbox: opens the request to its agent's socket or to one of its
 * ports (TLS where the sandbox asked for it) over keep-alive pools, with the client's headers
 * cleaned and its Host masked; and says what a failed connection means to the client.
 */
import {
  Agent,
  request as httpRequest,
  type ClientRequest,
  type IncomingMessage,
  type RequestOptions,
} from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { forwardedRequestHeaders } from './forward-headers.js'
import type { Upstream } from './proxy-decision.js'
import type { ProxyTarget } from './proxy-target.js'
import { portNotOpen, trafficTokenHeader, type SandboxErrorBody } from './sandbox-errors.js'

/** Opens upstream requests; `close` destroys the pooled connections (in-flight streams end). */
export interface UpstreamConnector {
  /**
   * The request sent upstream for `req`, not yet ended. An upgrade gets a connection of its
   * own (it never returns to a pool).
   * @throws when Node's client refuses the target or a header value its server let through
   */
  open(
    req: IncomingMessage,
    target: ProxyTarget,
    upstream: Upstream,
    upgrade: boolean,
  ): ClientRequest
  close(): void
}

/** Options of {@link createUpstreamConnector}. */
export interface UpstreamConnectorOptions {
  /** Idle keep-alive connections kept per agent socket or sandbox port. */
  maxIdleSockets: number
}

export function createUpstreamConnector(options: UpstreamConnectorOptions): UpstreamConnector {
  // One Agent pools per socket path (or host and port) by itself and drops a pool when its last
  // socket closes, so sandboxes that come and go leave nothing behind.
  const poolOptions = {
    keepAlive: true,
    maxFreeSockets: options.maxIdleSockets,
    scheduling: 'lifo' as const,
  }
  const agent = new Agent(poolOptions)
  // A sandbox's TLS service has whatever certificate its owner gave it: E2B's proxy does not
  // check it either (the client's trust is in this server, not in the sandbox).
  const tlsAgent = new HttpsAgent({ ...poolOptions, rejectUnauthorized: false })

  return {
    open(req, target, upstream, upgrade) {
      const common: RequestOptions = {
        method: req.method,
        path: req.url,
        // A flat [name, value, ...] list keeps names' case and repeats; Node takes it as is.
        headers: upstreamHeaders(req, target, upstream, upgrade),
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
    },
    close() {
      agent.destroy()
      tlsAgent.destroy()
    },
  }
}

/** The headers sent upstream: cleaned, and to a port without the traffic token, Host masked. */
function upstreamHeaders(
  req: IncomingMessage,
  target: ProxyTarget,
  upstream: Upstream,
  upgrade: boolean,
): string[] {
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
  return outgoing
}

/** What a failed upstream connection means to the client. */
export function upstreamFailure(
  sandboxId: string,
  upstream: Upstream,
  err: NodeJS.ErrnoException,
): SandboxErrorBody {
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
