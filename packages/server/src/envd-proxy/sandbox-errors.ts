/**
 * The answers the proxy gives itself, in the shape of E2B's edge proxy (E2B's own worded as it
 * words them: the SDK and users' code compare messages): JSON for programs, a small HTML page
 * for browsers; written to a response, or raw to the socket of a client asking for an upgrade.
 */
import {
  STATUS_CODES,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http'
import type { Duplex } from 'node:stream'
import { errorMessage } from '@sandcell/shared'

/** The header a secured sandbox's ports require (E2B's name). */
export const trafficTokenHeader = 'e2b-traffic-access-token'

export interface SandboxErrorBody {
  code: number
  message: string
  sandboxId?: string
  port?: number
}

export function sandboxNotFound(sandboxId: string): SandboxErrorBody {
  return { sandboxId, message: 'The sandbox was not found', code: 502 }
}

export function portNotOpen(sandboxId: string, port: number): SandboxErrorBody {
  return { sandboxId, message: 'The sandbox is running but port is not open', port, code: 502 }
}

export function sandboxPaused(sandboxId: string): SandboxErrorBody {
  return {
    code: 502,
    sandboxId,
    message: `sandbox ${sandboxId} is paused; resume it with Sandbox.connect()`,
  }
}

export function resumeFailed(sandboxId: string, err: unknown): SandboxErrorBody {
  return {
    code: 502,
    sandboxId,
    message: `sandbox ${sandboxId} could not be resumed: ${errorMessage(err)}`,
  }
}

export function internalPathRefused(sandboxId: string, path: string): SandboxErrorBody {
  return { code: 403, sandboxId, message: `${path} is for the server only` }
}

export function invalidResponse(sandboxId: string): SandboxErrorBody {
  return { code: 502, sandboxId, message: `sandbox ${sandboxId} sent an invalid response` }
}

/** A request Node's client will not send (a target or header value its server let through). */
export function cannotForward(err: unknown): SandboxErrorBody {
  return { code: 400, message: `request cannot be forwarded: ${errorMessage(err)}` }
}

export function trafficTokenMissing(sandboxId: string): SandboxErrorBody {
  return {
    sandboxId,
    message: `Sandbox is secured with traffic access token. Token header '${trafficTokenHeader}' is missing`,
    code: 403,
  }
}

export function trafficTokenInvalid(sandboxId: string): SandboxErrorBody {
  return {
    sandboxId,
    message: `Sandbox is secured with traffic access token. Provided token in header '${trafficTokenHeader}' is invalid`,
    code: 403,
  }
}

const browserAgent = /mozilla|chrome|safari|firefox|edg\//i

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** The body and content type for this client: HTML when a browser asks, JSON otherwise. */
export function renderErrorBody(
  headers: IncomingHttpHeaders,
  body: SandboxErrorBody,
): { contentType: string; text: string } {
  const agent = headers['user-agent'] ?? ''
  if (browserAgent.test(agent)) {
    const title = `${body.code} \u2014 ${escapeHtml(body.message)}`
    const facts = [
      body.sandboxId === undefined
        ? ''
        : `<p>Sandbox: <code>${escapeHtml(body.sandboxId)}</code></p>`,
      body.port === undefined ? '' : `<p>Port: <code>${body.port}</code></p>`,
    ].join('')
    return {
      contentType: 'text/html; charset=utf-8',
      text: `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${facts}</body></html>\n`,
    }
  }
  return { contentType: 'application/json', text: JSON.stringify(body) }
}

/**
 * Answers `res` with `body` and returns the body's length, or destroys `res` when an answer
 * has begun already (a status cannot change mid-response).
 */
export function sendError(
  req: IncomingMessage,
  res: ServerResponse,
  status: number,
  body: SandboxErrorBody,
): number {
  if (res.headersSent || res.destroyed) {
    res.destroy()
    return 0
  }
  const { contentType, text } = renderErrorBody(req.headers, body)
  const length = Buffer.byteLength(text)
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': length,
    'cache-control': 'no-store',
    // An unread upload is not drained (it may be gigabytes): the connection ends instead.
    ...(req.complete ? {} : { connection: 'close' }),
  })
  res.end(text)
  return length
}

/** An answer written straight to an upgrading client's socket, which then closes. */
export function sendRawError(
  req: IncomingMessage,
  socket: Duplex,
  status: number,
  body: SandboxErrorBody,
): void {
  const { contentType, text } = renderErrorBody(req.headers, body)
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
      `content-type: ${contentType}\r\ncontent-length: ${Buffer.byteLength(text)}\r\n` +
      `cache-control: no-store\r\nconnection: close\r\n\r\n${text}`,
  )
}
