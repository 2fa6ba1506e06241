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

export function handleError(
  error: FastifyError | Error,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  if (error instanceof SandcellError) {
    if (error.status >= 500) {
      request.log.error({ err: error }, 'request failed')
    }
    void reply.status(error.status).send(errorBody(error.status, error.message))
    return
  }
  if (error instanceof ZodError) {
    void reply.status(400).send(errorBody(400, `invalid request: ${describeZodError(error)}`))
    return
  }
  const status = (error as FastifyError).statusCode
  if (status !== undefined && status >= 400 && status < 500) {
    void reply.status(status).send(errorBody(status, error.message))
    return
  }
  request.log.error({ err: error }, 'unexpected error')
  void reply
    .status(500)
    .send(errorBody(500, `internal error (request ${request.id}); see the server log`))
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
  if (error instanceof SandcellError) {
    if (error.status >= 500) {
      request.log.error({ err: error }, 'run request failed')
    }
    const retryAfterS = error.details?.retryAfterS
    if (typeof retryAfterS === 'number') {
      void reply.header('retry-after', String(retryAfterS))
    }
    const reason = error.details?.reason
    void reply
      .status(error.status)
      .send({ message: error.message, ...(typeof reason === 'string' ? { reason } : {}) })
    return
  }
  const fastifyError = error as FastifyError
  if (fastifyError.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    void reply.status(415).send({ message: 'requests must be of type application/json' })
    return
  }
  if (fastifyError.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    void reply.status(413).send({
      message: `request body is larger than the limit of ${request.routeOptions.bodyLimit ?? 0} bytes`,
    })
    return
  }
  const status = fastifyError.statusCode
  if (status !== undefined && status >= 400 && status < 500) {
    void reply.status(status).send({ message: error.message })
    return
  }
  request.log.error({ err: error }, 'unexpected error')
  void reply
    .status(500)
    .send({ message: `internal error (request ${request.id}); see the server log` })
}
