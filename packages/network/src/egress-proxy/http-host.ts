/**
 * The host an HTTP/1.x request names, read from the request head at the start of a connection.
 * Strict on purpose: where this parser and the upstream's could read a head differently (bare
 * LF, folded lines, two Host headers), the request is refused rather than guessed at.
 */

export type HttpHostResult =
  | { kind: 'need-more' }
  /** `name` is the Host header's host, port stripped: not yet checked to be a host name. */
  | { kind: 'host'; name: string }
  | { kind: 'invalid'; reason: string }

/** The longest request head accepted, terminator included. */
export const maxRequestHeadBytes = 16 * 1024

const headTerminator = '\r\n\r\n'
const token = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
const requestLinePattern = new RegExp(`^(${token}) ([\\x21-\\x7e]+) HTTP/1\\.[01]$`)
/** What a request line may look like while it is still arriving. */
const partialRequestLinePattern = new RegExp(
  `^(?:${token}(?: [\\x21-\\x7e]*(?: [\\x21-\\x7e]*)?)?)?$`,
)
const headerLinePattern = new RegExp(`^(${token}):[ \\t]*(.*?)[ \\t]*$`)
/** Control characters but HTAB; CR and LF are the line structure, checked apart. */
// eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
const controlPattern = /[\x00-\x08\x0a-\x1f\x7f]/
const absoluteFormPattern = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/([^/?#]*)/

const needMore: HttpHostResult = Object.freeze({ kind: 'need-more' })

function invalid(reason: string): HttpHostResult {
  return { kind: 'invalid', reason }
}

/** `host[:port]` (RFC 9110 7.2) to its host, or the reason it is refused. */
function hostOf(authority: string): { host: string } | { reason: string } {
  if (authority === '') {
    return { reason: 'empty host' }
  }
  if (authority.startsWith('[')) {
    return { reason: 'host is an IPv6 literal, not a name' }
  }
  if (authority.includes('@')) {
    return { reason: 'host carries user information' }
  }
  const colon = authority.indexOf(':')
  if (colon === -1) {
    return { host: authority }
  }
  const port = authority.slice(colon + 1)
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) {
    return { reason: 'host has a malformed port' }
  }
  return colon === 0 ? { reason: 'empty host' } : { host: authority.slice(0, colon) }
}

function sameHost(a: string, b: string): boolean {
  const canonical = (host: string) => host.toLowerCase().replace(/\.$/, '')
  return canonical(a) === canonical(b)
}

/**
 * Reads the Host of the request head at the start of `buffer` (a connection's bytes so far); call
 * again with more bytes on `need-more`. Bytes after the head (a body, pipelined requests) are
 * ignored. `invalid` for anything but an HTTP/1.0 or 1.1 head of at most
 * {@link maxRequestHeadBytes} with exactly one Host header, and, for an absolute-form or CONNECT
 * target, the same host in the target as in Host (RFC 9112 3.2.2 has the target win).
 */
export function parseHttpHost(buffer: Buffer): HttpHostResult {
  const end = buffer.subarray(0, maxRequestHeadBytes).indexOf(headTerminator, 0, 'latin1')
  if (end === -1) {
    // A connection that cannot become a request (TLS on port 80, say) is refused at once rather
    // than held until the peek deadline.
    const lineEnd = buffer.indexOf('\r\n', 0, 'latin1')
    const line = buffer.subarray(0, lineEnd === -1 ? buffer.length : lineEnd).toString('latin1')
    const complete = lineEnd !== -1
    if (
      complete
        ? !requestLinePattern.test(line)
        : !partialRequestLinePattern.test(line.replace(/\r$/, ''))
    ) {
      return invalid('not an HTTP/1.x request line')
    }
    return buffer.length >= maxRequestHeadBytes
      ? invalid(`request head longer than ${maxRequestHeadBytes} bytes`)
      : needMore
  }
  const lines = buffer.subarray(0, end).toString('latin1').split('\r\n')
  if (lines.some((line) => line.includes('\r') || line.includes('\n'))) {
    return invalid('bare CR or LF in the request head')
  }
  const request = requestLinePattern.exec(lines[0] ?? '')
  if (request === null) {
    return invalid('not an HTTP/1.x request line')
  }
  const method = request[1] ?? ''
  const target = request[2] ?? ''
  const hosts: string[] = []
  for (const line of lines.slice(1)) {
    if (line.startsWith(' ') || line.startsWith('\t')) {
      return invalid('folded header line')
    }
    if (controlPattern.test(line)) {
      return invalid('control character in a header')
    }
    const header = headerLinePattern.exec(line)
    if (header === null) {
      return invalid('malformed header line')
    }
    if (header[1]?.toLowerCase() === 'host') {
      hosts.push(header[2] ?? '')
    }
  }
  const [value, ...others] = hosts
  if (value === undefined || others.length > 0) {
    return invalid(value === undefined ? 'no Host header' : 'more than one Host header')
  }
  const host = hostOf(value)
  if ('reason' in host) {
    return invalid(host.reason)
  }
  const targetAuthority = method === 'CONNECT' ? target : absoluteFormPattern.exec(target)?.[1]
  if (targetAuthority !== undefined) {
    const named = hostOf(targetAuthority)
    if ('reason' in named) {
      return invalid(`request target: ${named.reason}`)
    }
    if (!sameHost(named.host, host.host)) {
      return invalid('request target names another host than Host')
    }
  } else if (!target.startsWith('/') && !(target === '*' && method === 'OPTIONS')) {
    return invalid('malformed request target')
  }
  return { kind: 'host', name: host.host }
}
