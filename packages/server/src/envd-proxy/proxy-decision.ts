/**
 * The proxy's decision on a routed request, before any byte goes anywhere: forward it (to the
 * agent's socket or to a port of the sandbox) or refuse it with the answer to give.
 */
import { timingSafeEqual } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { envdPort, type EnvdRoute } from './envd-router.js'
import type { ProxyRegistry, ProxyTarget } from './proxy-target.js'
import {
  internalPathRefused,
  portNotOpen,
  sandboxNotFound,
  sandboxPaused,
  trafficTokenHeader,
  trafficTokenInvalid,
  trafficTokenMissing,
  type SandboxErrorBody,
} from './sandbox-errors.js'

/** Where a request goes: the agent's socket, or a TCP port of the sandbox. */
export type Upstream =
  { kind: 'agent'; socketPath: string } | { kind: 'port'; host: string; port: number; tls: boolean }

/**
 * What becomes of a request after routing, lookup and the traffic-token check: forwarded,
 * refused, or held while a paused sandbox with autoResume wakes (then decided again: one that
 * booted again on its disk has a new agent and address).
 */
export type ProxyDecision =
  | { kind: 'forward'; target: ProxyTarget; upstream: Upstream }
  | { kind: 'resume'; target: ProxyTarget }
  | { kind: 'refuse'; sandboxId: string | undefined; status: number; body: SandboxErrorBody }

/** Paths of the agent that only the server itself calls (through the socket, not the proxy). */
const internalEnvdPaths = new Set(['/init'])

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

/**
 * Decides what to do with `req`, routed by the router to `route`: looks the sandbox up, refuses
 * a paused one that does not resume on traffic, envd's server-only paths, and a port request
 * without the sandbox's traffic token; holds a request for a paused one that does resume.
 * Reads headers and the URL only.
 */
export function decide(
  req: IncomingMessage,
  route: EnvdRoute,
  registry: ProxyRegistry,
): ProxyDecision {
  if (route.kind === 'refused') {
    return {
      kind: 'refuse',
      sandboxId: undefined,
      status: route.status,
      body: { code: route.status, message: route.message },
    }
  }
  const { sandboxId, port } = route
  const target = registry.get(sandboxId)
  if (target === undefined) {
    return { kind: 'refuse', sandboxId, status: 502, body: sandboxNotFound(sandboxId) }
  }
  if (target.state === 'paused' && !target.autoResume) {
    return { kind: 'refuse', sandboxId, status: 502, body: sandboxPaused(sandboxId) }
  }
  const paused = target.state === 'paused'
  if (port === envdPort) {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    if (internalEnvdPaths.has(path)) {
      return { kind: 'refuse', sandboxId, status: 403, body: internalPathRefused(sandboxId, path) }
    }
    if (paused) {
      return { kind: 'resume', target }
    }
    return { kind: 'forward', target, upstream: { kind: 'agent', socketPath: target.socketPath } }
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
  if (paused) {
    return { kind: 'resume', target }
  }
  if (target.portAddress === undefined) {
    return { kind: 'refuse', sandboxId, status: 502, body: portNotOpen(sandboxId, port) }
  }
  return {
    kind: 'forward',
    target,
    upstream: {
      kind: 'port',
      host: target.portAddress,
      port,
      tls: target.httpsPorts?.includes(port) ?? false,
    },
  }
}
