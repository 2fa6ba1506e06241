/**
 * Turns every failure into the JSON error shape the e2b SDK reads ({ code, message }) with the
 * right status: SandcellErrors by their status, validation errors as 400 listing every bad
 * field, anything else as 500 with the request id to find it in the logs.
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
