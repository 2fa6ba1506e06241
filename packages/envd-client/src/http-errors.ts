/**
 * The one error table of sandcell's HTTP clients (the SDK's control plane and the envd client's
 * `/files`, `/archive` and `/init`): an HTTP answer (status + E2B's `{ code, message }` body) or a
 * failed connection becomes the `@sandcell/shared` error class a caller can catch.
 */
import { z } from 'zod'
import {
  BugError,
  DriverError,
  FailedPreconditionError,
  FileNotFoundError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  SandboxNotFoundError,
  SandcellError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
  errorMessage,
} from '@sandcell/shared'

/** What a request was about, so an error can name it. */
export interface RequestContext {
  /** The server's URL as the client was configured with it; `unix:<path>` for an agent's socket. */
  serverUrl: string
  method: string
  /** The full URL asked. */
  url: string
  /** Set when the path names a sandbox: a 404 then means that sandbox is gone. */
  sandboxId?: string | undefined
  /** Set for `/files` requests: a 404 then means that file is missing. */
  filePath?: string | undefined
  /**
   * Set when the agent was reached over its socket (the host side): a 5xx answer or a failed
   * connection is then this host's failure, not a server's.
   */
  agentSocket?: string | undefined
}

const errorBodySchema = z.object({
  code: z.number().optional(),
  message: z.string(),
})

/** The server's message from an error body: `message` of `{ code, message }`, else the text. */
export function serverMessage(body: string): string {
  try {
    const parsed = errorBodySchema.safeParse(JSON.parse(body))
    if (parsed.success) {
      return parsed.data.message
    }
  } catch {
    // Not JSON (a proxy's HTML page, plain text): the text itself is the best message.
  }
  const text = body.trim().replace(/\s+/g, ' ')
  return text.length > 200 ? `${text.slice(0, 200)}…` : text
}

/**
 * The error for an HTTP answer that is not a success.
 * @param body the response body as text (JSON `{ code, message }` from sandcell and E2B).
 */
export function errorFromResponse(
  status: number,
  body: string,
  context: RequestContext,
): SandcellError {
  const message = serverMessage(body) || `HTTP ${status}`
  const options = { details: { status, method: context.method, url: context.url } }
  const failed = `${context.method} ${context.url} failed with HTTP ${status}: ${message}`
  if (context.agentSocket !== undefined && status >= 500 && status !== 507) {
    return new DriverError(failed, options)
  }
  switch (status) {
    case 400:
      return new InvalidArgumentError(message, options)
    case 401:
      return new UnauthenticatedError(
        `unauthorized (401) by ${context.serverUrl}: ${message}`,
        options,
      )
    case 403:
      return new PermissionDeniedError(message, options)
    case 404:
      if (context.filePath !== undefined) {
        return new FileNotFoundError(context.filePath, options)
      }
      if (context.sandboxId !== undefined) {
        return new SandboxNotFoundError(context.sandboxId, options)
      }
      return new NotFoundError(message, options)
    case 409:
      return new FailedPreconditionError(message, options)
    case 429:
      return new ResourceExhaustedError(message, options)
    case 502:
      return new UnavailableError(
        context.sandboxId === undefined
          ? `sandbox not running: ${message}`
          : `sandbox ${context.sandboxId} is not running: ${message}`,
        options,
      )
    case 503:
      return new UnavailableError(message, options)
    case 504:
      return new TimeoutError(message, options)
    case 507:
      return new NotEnoughSpaceError(message, options)
    default:
      return new SandcellError(failed, options)
  }
}

/**
 * What went wrong under undici's "fetch failed" TypeError: the socket error with its code
 * ("connect ECONNREFUSED 127.0.0.1:9"), else the innermost cause's message ("bad port").
 */
function networkReason(err: unknown): string {
  let current: unknown = err
  let innermost = errorMessage(err)
  for (let depth = 0; depth < 5 && current instanceof Error; depth += 1) {
    const code = (current as { code?: unknown }).code
    if (typeof code === 'string') {
      return current.message.includes(code) ? current.message : `${code} ${current.message}`
    }
    innermost = current.message
    current = current.cause
  }
  return innermost
}

/**
 * A connection that failed before any answer: the server is down, unreachable or misnamed
 * (UnavailableError), or the agent's socket is gone (DriverError).
 */
export function errorFromNetwork(err: unknown, context: RequestContext): SandcellError {
  const options = { cause: err, details: { method: context.method, url: context.url } }
  return context.agentSocket === undefined
    ? new UnavailableError(
        `cannot reach the sandcell server at ${context.serverUrl} (${networkReason(err)})`,
        options,
      )
    : new DriverError(
        `cannot reach the sandbox's agent at ${context.agentSocket} (${networkReason(err)})`,
        options,
      )
}

/** A request the client's deadline ended. */
export function errorFromTimeout(
  timeoutMs: number,
  context: RequestContext,
  cause: unknown,
): TimeoutError {
  return new TimeoutError(`${context.method} ${context.url} got no answer within ${timeoutMs} ms`, {
    cause,
    details: { method: context.method, url: context.url, timeoutMs },
  })
}

/**
 * The error for a request that failed before its answer or while reading it: the caller's own
 * abort reason as it is, the client's deadline as a TimeoutError, else an unreachable server or
 * agent.
 */
export function requestFailure(
  err: unknown,
  request: {
    /** The caller's signals: one that aborted wins. */
    callers: readonly AbortSignal[]
    /** The client's own deadline, when the request has one. */
    deadline: { signal: AbortSignal; timeoutMs: number } | undefined
    context: RequestContext
  },
): unknown {
  const aborted = request.callers.find((signal) => signal.aborted)
  if (aborted !== undefined) {
    return aborted.reason
  }
  if (request.deadline?.signal.aborted === true) {
    return errorFromTimeout(request.deadline.timeoutMs, request.context, err)
  }
  return errorFromNetwork(err, request.context)
}

/**
 * A JSON body as a value (an empty one is `undefined`).
 * @throws BugError when the body is not JSON at all
 */
export function parseJsonBody(text: string, context: RequestContext): unknown {
  if (text === '') {
    return undefined
  }
  try {
    return JSON.parse(text) as unknown
  } catch (err) {
    const { method, url } = context
    throw new BugError(
      `the server answered ${method} ${url} with a body that is not JSON: ${JSON.stringify(text.slice(0, 200))}`,
      { cause: err, details: { method, url } },
    )
  }
}

/** A response body that does not have the documented shape: a server bug, named precisely. */
export function errorFromBadBody(error: z.ZodError, context: RequestContext): BugError {
  const problems = error.issues.map(
    (issue) => `${issue.path.map(String).join('.') || '(body)'}: ${issue.message}`,
  )
  return new BugError(
    `the server answered ${context.method} ${context.url} with an unexpected body: ${problems.join('; ')}`,
    { details: { method: context.method, url: context.url, problems } },
  )
}
