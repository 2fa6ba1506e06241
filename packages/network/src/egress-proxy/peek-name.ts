/** The name a sandbox's first bytes ask for: the HTTP Host header or the TLS SNI. */
import { parseHttpHost } from './http-host.js'
import { parseTlsClientHello } from './tls-client-hello.js'

/** Which redirected port a connection came in on. */
export type Listener = 'http' | 'tls'

export type Peek =
  { kind: 'need-more' } | { kind: 'name'; raw: string } | { kind: 'refuse'; reason: string }

export function peekName(listener: Listener, bytes: Buffer): Peek {
  if (listener === 'http') {
    const result = parseHttpHost(bytes)
    switch (result.kind) {
      case 'need-more':
        return result
      case 'host':
        return { kind: 'name', raw: result.name }
      case 'invalid':
        return { kind: 'refuse', reason: result.reason }
    }
  }
  const result = parseTlsClientHello(bytes)
  switch (result.kind) {
    case 'need-more':
      return result
    case 'sni':
      return { kind: 'name', raw: result.name }
    case 'no-sni':
      return { kind: 'refuse', reason: 'ClientHello names no server' }
    case 'invalid':
      return { kind: 'refuse', reason: result.reason }
  }
}
