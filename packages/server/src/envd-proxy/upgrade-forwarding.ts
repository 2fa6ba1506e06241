/**
 * One proxied connection upgrade (a WebSocket): the sandbox's 101 and then raw bytes both
 * ways, or its refusal relayed as it is, or the proxy's own error written to the socket.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { forwardedResponseHeaders } from './forward-headers.js'
import type { Upstream } from './proxy-decision.js'
import type { ProxyTarget } from './proxy-target.js'
import { cannotForward, sendRawError } from './sandbox-errors.js'
import { upstreamFailure, type UpstreamConnector } from './upstream-request.js'

/** A response head as raw HTTP/1.1 text. */
function rawHead(status: number, message: string, rawHeaders: readonly string[]): string {
  let text = `HTTP/1.1 ${status} ${message}\r\n`
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    text += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`
  }
  return `${text}\r\n`
}

/** Relays the upgrade `req` (whose socket is the client's) to `upstreamTarget`. */
export function forwardUpgrade(
  connector: UpstreamConnector,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  target: ProxyTarget,
  upstreamTarget: Upstream,
): void {
  const { sandboxId } = target
  let upstream
  try {
    upstream = connector.open(req, target, upstreamTarget, true)
  } catch (err) {
    sendRawError(req, socket, 400, cannotForward(err))
    return
  }
  socket.once('error', () => upstream.destroy())
  socket.once('close', () => upstream.destroy())
  upstream.once('upgrade', (response, upstreamSocket, upstreamHead) => {
    upstreamSocket.once('error', () => socket.destroy())
    socket.once('error', () => upstreamSocket.destroy())
    socket.write(rawHead(101, response.statusMessage ?? 'Switching Protocols', response.rawHeaders))
    if (upstreamHead.length > 0) {
      socket.write(upstreamHead)
    }
    if (head.length > 0) {
      upstreamSocket.write(head)
    }
    upstreamSocket.pipe(socket)
    socket.pipe(upstreamSocket)
  })
  upstream.once('response', (response) => {
    // The sandbox declined the upgrade: its answer goes to the client as is.
    const headers = forwardedResponseHeaders(response.rawHeaders, response.headers.connection)
    socket.write(
      // Without a length, the body ends where the connection does.
      rawHead(response.statusCode ?? 502, response.statusMessage ?? '', [
        ...headers,
        'connection',
        'close',
      ]),
    )
    response.pipe(socket)
  })
  upstream.once('error', (err: NodeJS.ErrnoException) => {
    if (!socket.destroyed) {
      sendRawError(req, socket, 502, upstreamFailure(sandboxId, upstreamTarget, err))
    }
  })
  upstream.end()
}
