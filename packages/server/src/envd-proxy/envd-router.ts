/** Decides whether a raw HTTP request is for a sandbox's envd (and which) or for the API. */
import type { IncomingMessage } from 'node:http'
import type { ProxyRegistry } from './proxy-target.js'
import { findSignedSandbox } from './file-signature.js'

/** The port envd listens on inside an E2B sandbox; the SDK names it in `E2b-Sandbox-Port`. */
export const envdPort = 49983

/**
 * Where a sandbox request goes: a sandbox (by the `E2b-Sandbox-Id` header, by a
 * `PORT-SANDBOXID.DOMAIN` Host, or by the token that signed a `/files` URL), or an answer the
 * proxy gives itself because the request names no sandbox in a usable way.
 */
export type EnvdRoute =
  | { kind: 'sandbox'; sandboxId: string; port: number; via: 'header' | 'host' | 'signature' }
  | { kind: 'refused'; status: 400 | 401; message: string }

/** Dependencies of {@link createEnvdRouter}. */
export interface EnvdRouterOptions {
  registry: ProxyRegistry
  /** Base domain of sandbox host names (`49983-<id>.<domain>`); `localhost` always works too. */
  domain: string
}

/** Ids we look up at all: E2B's and ours are short alphanumerics (ours: 20 lowercase). */
const sandboxIdPattern = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/
/** The first label of a sandbox host name: `<port>-<id>` (host names arrive lowercased here). */
const hostLabelPattern = /^(\d{1,5})-([a-z0-9][a-z0-9_-]{0,127})$/
const portPattern = /^\d{1,5}$/

/**
 * Builds the router. It reads only headers and the request target (and, for a signed `/files`
 * URL without a sandbox id, hashes the URL once per sandbox with a token); it never touches the
 * body. The header wins over the Host; a Host names a sandbox only under the configured domain
 * or `localhost`.
 */
export function createEnvdRouter(
  options: EnvdRouterOptions,
): (req: IncomingMessage) => EnvdRoute | undefined {
  const { registry } = options
  const domain = options.domain.toLowerCase().replace(/^\.+|\.+$/g, '')
  const suffixes = [...new Set([`.${domain}`, '.localhost'])]

  return (req) => {
    const idHeader = req.headers['e2b-sandbox-id']
    if (idHeader !== undefined) {
      return routeByHeader(idHeader, req.headers['e2b-sandbox-port'])
    }
    const byHost = routeByHost(req.headers.host, suffixes)
    if (byHost !== undefined) {
      return byHost
    }
    return routeBySignature(req, registry)
  }
}

function routeByHeader(
  idHeader: string | string[],
  portHeader: string | string[] | undefined,
): EnvdRoute {
  // Node joins a repeated custom header with ", ", which the pattern rejects: a request naming
  // two sandboxes is refused rather than sent to either.
  if (typeof idHeader !== 'string' || !sandboxIdPattern.test(idHeader)) {
    return {
      kind: 'refused',
      status: 400,
      message: 'E2b-Sandbox-Id must be given once and hold one sandbox id',
    }
  }
  let port = envdPort
  if (portHeader !== undefined) {
    if (typeof portHeader !== 'string' || !portPattern.test(portHeader)) {
      return {
        kind: 'refused',
        status: 400,
        message: 'E2b-Sandbox-Port must be given once and hold a port number',
      }
    }
    port = Number(portHeader)
  }
  return { kind: 'sandbox', sandboxId: idHeader, port, via: 'header' }
}

function routeByHost(host: string | undefined, suffixes: string[]): EnvdRoute | undefined {
  if (host === undefined) {
    return undefined
  }
  let name = host.toLowerCase()
  const colon = name.lastIndexOf(':')
  if (colon !== -1) {
    name = name.slice(0, colon)
  }
  if (name.endsWith('.')) {
    name = name.slice(0, -1)
  }
  for (const suffix of suffixes) {
    if (name.length > suffix.length && name.endsWith(suffix)) {
      const match = hostLabelPattern.exec(name.slice(0, name.length - suffix.length))
      if (match?.[1] !== undefined && match[2] !== undefined) {
        return { kind: 'sandbox', sandboxId: match[2], port: Number(match[1]), via: 'host' }
      }
    }
  }
  return undefined
}

/** A `/files?…&signature=…` request that names no sandbox: the signing token tells which. */
function routeBySignature(req: IncomingMessage, registry: ProxyRegistry): EnvdRoute | undefined {
  const url = req.url ?? ''
  const queryStart = url.indexOf('?')
  if (
    queryStart !== '/files'.length ||
    !url.startsWith('/files') ||
    !url.includes('signature=', queryStart)
  ) {
    return undefined
  }
  const query = new URLSearchParams(url.slice(queryStart + 1))
  if (!query.has('signature')) {
    return undefined
  }
  const match = findSignedSandbox(registry.list(), query, req.method === 'POST' ? 'write' : 'read')
  if (match.kind === 'invalid') {
    return { kind: 'refused', status: 401, message: match.message }
  }
  return { kind: 'sandbox', sandboxId: match.target.sandboxId, port: envdPort, via: 'signature' }
}
