/**
 * Turns every failure into the JSON error shape its client reads with the right status: the
 * e2b SDK's `{ code, message }` for the E2B API, Piston's and Lambdo's `{ message }` for runs.
 * SandcellErrors go by their status, validation errors are 400 listing every bad field,
 * anything else is 500 with the request id to find it in the logs.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { ZodError } from 'zod'
import { SandcellError } from '@sandcell/shared'

export interface ErrorBody {
  code: number
  message: string
}

export function errorBody(status: number, message: string): ErrorBody {
  return { code: status, message }
}

export function describeZodError(error: ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length === 0 ? 'body' : issue.path.join('.')}: ${issue.message}`)
    .join('; ')
}

/** What went wrong, in the terms every error shape needs. */
interface Failure {
  status: number
  message: string
  details?: Record<string, unknown> | undefined
}

/** Classifies a failure once for both error shapes; logs what an operator must look at. */
function toFailure(error: FastifyError | Error, request: FastifyRequest): Failure {
  if (error instanceof SandcellError) {
    if (error.status >= 500) {
      request.log.error({ err: error }, 'request failed')
    }
    return { status: error.status, message: error.message, details: error.details }
  }
  if (error instanceof ZodError) {
    return { status: 400, message: `invalid request: ${describeZodError(error)}` }
  }
  const fastifyError = error as FastifyError
  if (fastifyError.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    // No id or name this server gives out is that long: a 404, which the SDK reads as not found.
    return {
      status: 404,
      message: 'not found: a part of the path is longer than any id or name this server gives out',
    }
  }
  if (fastifyError.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return { status: 415, message: 'requests must be of type application/json' }
  }
  if (fastifyError.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return {
      status: 413,
      message: `request body is larger than the limit of ${request.routeOptions.bodyLimit ?? 0} bytes`,
    }
  }
  const status = fastifyError.statusCode
  if (status !== undefined && status >= 400 && status < 500) {
    return { status, message: error.message }
  }
  request.log.error({ err: error }, 'unexpected error')
  return { status: 500, message: `internal error (request ${request.id}); see the server log` }
}

/** The E2B API's error shape, `{ code, message }`, which the e2b SDK maps to its error classes. */
export function handleError(
  error: FastifyError | Error,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  const failure = toFailure(error, request)
  void reply.status(failure.status).send(errorBody(failure.status, failure.message))
}

/**
 * The run APIs' error shape (Piston's, also used for Lambdo's `/run`): `{ message }`, plus
 * `reason` when a runtime exists but cannot run here, and `Retry-After` on 429.
 */
export function handleRunApiError(
  error: FastifyError | Error,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  const failure = toFailure(error, request)
  const retryAfterS = failure.details?.retryAfterS
  if (typeof retryAfterS === 'number') {
    void reply.header('retry-after', String(retryAfterS))
  }
  const reason = failure.details?.reason
  void reply
    .status(failure.status)
    .send({ message: failure.message, ...(typeof reason === 'string' ? { reason } : {}) })
}
