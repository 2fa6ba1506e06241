/**
 * OpenLambda's HTTP API: the registry (`POST /registry/<name>` with a tar.gz or one file, list,
 * metadata, config, delete — what `ol admin install` and curl use) and `ANY /run/<name>[/…]`.
 * Errors are JSON `{ error: { code, message } }` with distinct codes, never a host path.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { z } from 'zod'
import { isSandcellError } from '@sandcell/shared'
import type { FunctionService } from '../../services/function-service.js'
import type { FunctionVersionRecord } from '../../store/function-store.js'
import { describeZodError } from '../../error-handler.js'

const nameParams = z.object({ name: z.string().min(1).max(256) })
const deployQuery = z.object({ filename: z.string().min(1).max(128).optional() })

/** Largest request body a function gets (AWS Lambda's synchronous limit is 6 MB). */
export const maxInvokeBodyBytes = 6 * 1024 * 1024
/** Largest code upload (compressed); the unpacker has its own limits beyond. */
const maxDeployBytes = 64 * 1024 * 1024

function versionJson(version: FunctionVersionRecord) {
  return {
    digest: version.digest,
    runtime: version.runtime,
    entry: version.entry,
    uploadBytes: version.uploadBytes,
    entries: version.entries,
    uploadedAt: new Date(version.uploadedAt).toISOString(),
  }
}

function sendError(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.status(status).send({ error: { code, message } })
}

function handleFunctionError(
  error: FastifyError | Error,
  request: FastifyRequest,
  reply: FastifyReply,
) {
  if (isSandcellError(error)) {
    if (error.status >= 500) {
      request.log.error({ err: error }, 'function request failed')
    }
    return sendError(reply, error.status, error.code, error.message)
  }
  if (error instanceof z.ZodError) {
    return sendError(reply, 400, 'INVALID_ARGUMENT', `invalid request: ${describeZodError(error)}`)
  }
  const fastifyError = error as FastifyError
  if (fastifyError.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return sendError(
      reply,
      413,
      'PAYLOAD_TOO_LARGE',
      `the request body is larger than ${request.routeOptions.bodyLimit ?? 0} bytes`,
    )
  }
  request.log.error({ err: error }, 'unexpected error')
  return sendError(
    reply,
    500,
    'INTERNAL',
    `internal error (request ${request.id}); see the server log`,
  )
}

export function functionRoutes(
  app: FastifyInstance,
  options: { functions: FunctionService },
): void {
  const { functions } = options
  void app.register((scope, _options, done) => {
    scope.setErrorHandler(handleFunctionError)
    // Uploads and invocation bodies are bytes of any type: a deploy streams, an invoke buffers.
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser(
      '*',
      { parseAs: 'buffer', bodyLimit: maxInvokeBodyBytes },
      (_request, body, parsed) => parsed(null, body),
    )

    scope.get('/registry/', () => functions.names())
    scope.get('/registry', () => functions.names())

    scope.register((uploads, _uploadOptions, uploadsDone) => {
      uploads.removeAllContentTypeParsers()
      uploads.addContentTypeParser('*', (_request, _payload, parsed) => parsed(null))
      uploads.post('/registry/:name', { bodyLimit: maxDeployBytes }, async (request, reply) => {
        const { name } = nameParams.parse(request.params)
        const { filename } = deployQuery.parse(request.query)
        const version = await functions.deploy(name, request.raw, filename)
        return reply.status(201).send({ name, ...versionJson(version) })
      })
      uploadsDone()
    })

    scope.get('/registry/:name', (request) => {
      const { name } = nameParams.parse(request.params)
      const { current, versions } = functions.get(name)
      return {
        name,
        ...versionJson(current),
        config: current.config,
        versions: versions.map(versionJson),
      }
    })
    scope.get('/registry/:name/config', (request) => {
      const { name } = nameParams.parse(request.params)
      return functions.get(name).current.config
    })
    scope.delete('/registry/:name', async (request, reply) => {
      const { name } = nameParams.parse(request.params)
      await functions.delete(name)
      return reply.status(200).send({ name, deleted: true })
    })

    const invoke = async (request: FastifyRequest, reply: FastifyReply) => {
      const { name } = nameParams.parse(request.params)
      const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)
      const response = await functions.invoke(name, {
        method: request.method,
        path: request.url,
        headers: request.headers,
        body,
      })
      return reply.status(response.status).headers(response.headers).send(response.body)
    }
    scope.all('/run/:name', invoke)
    scope.all('/run/:name/*', invoke)
    done()
  })
}
