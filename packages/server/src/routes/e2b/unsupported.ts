/**
 * E2B API resources this server does not have (volumes, secrets), answered 501 with what is
 * missing: the e2b SDK reads a 404 there as "no such volume/secret" (`Volume.destroy` and
 * `Secret.destroy` return false, `Secret.exists` false), which would be a silent wrong answer.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import { errorBody } from '../../error-handler.js'

/**
 * A volume's content API (`/volumecontent/ID/...`), which the SDK calls with the volume's token
 * instead of an API key: answered 501 without a key, since there is nothing behind it to guard.
 */
export const volumeContentPath = /^\/volumecontent\//

/** Each resource's routes (as the e2b SDK calls them) and why they are missing. */
const unsupported = [
  {
    paths: ['/volumes', '/volumes/:volumeID', '/volumecontent/*'],
    message:
      'volumes are not supported by this server: sandboxes have no shared volume storage; copy files in with files.write',
  },
  {
    paths: ['/secrets', '/secrets/:secretID'],
    message:
      'secrets are not supported by this server: there is no secret store or egress proxy to resolve Secret.fill placeholders; pass values as envs',
  },
] as const

/** Registers the 501 answers, every method, in a scope that accepts any request body. */
export function unsupportedRoutes(app: FastifyInstance): void {
  void app.register((scope, _options, done) => {
    // Whatever the body (a volume file upload is octet-stream), the answer is the same 501.
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('*', (_request, _payload, parsed) => {
      parsed(null)
    })
    for (const { paths, message } of unsupported) {
      const answer = async (_request: unknown, reply: FastifyReply) =>
        reply.status(501).send(errorBody(501, message))
      for (const url of paths) {
        scope.route({ method: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'], url, handler: answer })
      }
    }
    done()
  })
}
