/** Upstream resolver addresses as the forwarder's options spell them. */
import { InvalidArgumentError } from '@sandcell/shared'
import { parseIpv4 } from '../policy/cidr.js'

/** One upstream resolver. */
export interface Upstream {
  host: string
  port: number
  /** `host:port`, for logs and per-upstream state. */
  label: string
}

const defaultDnsPort = 53

/**
 * `a.b.c.d` (port 53) or `a.b.c.d:port`.
 * @throws InvalidArgumentError for anything else
 */
export function parseUpstream(text: string): Upstream {
  const colon = text.indexOf(':')
  const host = colon === -1 ? text : text.slice(0, colon)
  const portText = colon === -1 ? String(defaultDnsPort) : text.slice(colon + 1)
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN
  if (parseIpv4(host) === undefined || !(port >= 1 && port <= 65535)) {
    throw new InvalidArgumentError(
      `invalid DNS upstream ${JSON.stringify(text)}: expected an IPv4 address, optionally with :port (1-65535)`,
    )
  }
  return { host, port, label: `${host}:${port}` }
}

/**
 * Parses a whole upstream list.
 * @throws InvalidArgumentError when it is empty or an entry is invalid
 */
export function parseUpstreams(texts: readonly string[]): Upstream[] {
  if (texts.length === 0) {
    throw new InvalidArgumentError('the DNS forwarder needs at least one upstream resolver')
  }
  return texts.map(parseUpstream)
}
