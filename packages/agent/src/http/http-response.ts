/** Small helpers for envd's plain HTTP routes: JSON bodies and envd's error shape. */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError, SandcellError, type Logger } from '@sandcell/shared'

/** Sends `body` as JSON with `status`. */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  })
  res.end(text)
}

/** Sends an empty response (204 by default), as envd does for /health and /init. */
export function sendEmpty(res: ServerResponse, status = 204): void {
  res.writeHead(status, { 'cache-control': 'no-store' })
  res.end()
}

/**
 * Sends an error in envd's shape `{ code, message }` with the status of the SandcellError (500
 * for anything else). When the response has started it can only be cut off.
 */
export function sendError(res: ServerResponse, err: unknown, log: Logger): void {
  const status = err instanceof SandcellError ? err.status : 500
  if (!(err instanceof SandcellError) || status >= 500) {
    log.error({ err }, 'http request failed')
  } else {
    log.debug({ err: err.message, status }, 'http request rejected')
  }
  if (res.headersSent) {
    res.destroy(err instanceof Error ? err : undefined)
    return
  }
  const message = err instanceof Error ? err.message : String(err)
  sendJson(res, status, { code: status, message })
}

/**
 * Reads a whole (small) request body.
 * @throws InvalidArgumentError when it is larger than `maxBytes`.
 */
export async function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > maxBytes) {
      throw new InvalidArgumentError(`request body is larger than ${maxBytes} bytes`)
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}

/**
 * Reads and drops the request body (up to `maxBytes`, then gives up) before an early answer, so
 * a client still sending its body sees the answer rather than a broken pipe.
 */
export async function discardBody(req: IncomingMessage, maxBytes: number): Promise<void> {
  // A body already being read belongs to its reader; Node drops what is left of it.
  if (req.complete || req.readableDidRead) {
    return
  }
  let size = 0
  try {
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > maxBytes) {
        return
      }
    }
  } catch {
    // The client went away: nothing left to drain.
  }
}
