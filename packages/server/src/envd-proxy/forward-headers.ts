/**
 * The header lists the proxy forwards, built once per message from Node's flat `rawHeaders`
 * (names keep their case and order, repeats stay repeated): hop-by-hop headers and our routing
 * headers are dropped, `x-forwarded-for` gains the client's address.
 */

/** Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus our own. */
const droppedRequestHeaders = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  // Node's server has already answered `100 Continue` to the client.
  'expect',
  // Routing headers: which sandbox is the proxy's business, not the agent's.
  'e2b-sandbox-id',
  'e2b-sandbox-port',
  // Rebuilt below with the client's address appended.
  'x-forwarded-for',
])

const droppedResponseHeaders = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
])

/** Client facts the forwarded request carries. */
export interface ForwardedRequestFacts {
  rawHeaders: readonly string[]
  /** The `Connection` header, whose tokens name more hop-by-hop headers. */
  connection: string | undefined
  /** The peer address of the client connection. */
  remoteAddress: string | undefined
}

/**
 * The request headers to send upstream as a flat `[name, value, …]` list. A body that came
 * chunked goes on chunked (Node re-frames it); a missing Host becomes `envd`.
 */
export function forwardedRequestHeaders(facts: ForwardedRequestFacts): string[] {
  const { rawHeaders } = facts
  const extraDropped = connectionTokens(facts.connection)
  const out: string[] = []
  let forwardedFor: string | undefined
  let chunked = false
  let hasHost = false
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string
    const value = rawHeaders[i + 1] as string
    const lower = name.toLowerCase()
    if (droppedRequestHeaders.has(lower) || lower.startsWith('proxy-')) {
      if (lower === 'x-forwarded-for') {
        forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`
      } else if (lower === 'transfer-encoding') {
        chunked = true
      }
      continue
    }
    if (extraDropped?.has(lower) === true) {
      continue
    }
    if (lower === 'host') {
      hasHost = true
    }
    out.push(name, value)
  }
  if (!hasHost) {
    out.push('host', 'envd')
  }
  if (chunked) {
    out.push('transfer-encoding', 'chunked')
  }
  const remote = facts.remoteAddress
  if (remote !== undefined) {
    out.push('x-forwarded-for', forwardedFor === undefined ? remote : `${forwardedFor}, ${remote}`)
  } else if (forwardedFor !== undefined) {
    out.push('x-forwarded-for', forwardedFor)
  }
  return out
}

/** The response headers to send to the client as a flat list (Node re-frames the body). */
export function forwardedResponseHeaders(
  rawHeaders: readonly string[],
  connection: string | undefined,
): string[] {
  const extraDropped = connectionTokens(connection)
  const out: string[] = []
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string
    const lower = name.toLowerCase()
    if (
      droppedResponseHeaders.has(lower) ||
      lower.startsWith('proxy-') ||
      extraDropped?.has(lower) === true
    ) {
      continue
    }
    out.push(name, rawHeaders[i + 1] as string)
  }
  return out
}

/** Extra header names a `Connection` value lists; undefined for the usual keep-alive/close. */
function connectionTokens(connection: string | undefined): Set<string> | undefined {
  if (connection === undefined) {
    return undefined
  }
  let tokens: Set<string> | undefined
  for (const token of connection.split(',')) {
    const name = token.trim().toLowerCase()
    if (name !== '' && name !== 'keep-alive' && name !== 'close') {
      tokens ??= new Set()
      tokens.add(name)
    }
  }
  return tokens
}
