/**
 * The answers the proxy gives itself, worded and shaped as E2B's edge proxy gives them (the
 * SDK and users' code compare messages): JSON for programs, a small HTML page for browsers.
 */
import type { IncomingHttpHeaders } from 'node:http'

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
