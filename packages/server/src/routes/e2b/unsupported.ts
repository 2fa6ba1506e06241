/**
 * E2B API resources this server does not have (volumes, secrets), answered 501 with what is
 * missing: the e2b SDK reads a 404 there as "no such volume/secret" (`Volume.destroy` and
 * `Secret.destroy` return false, `Secret.exists` false), which would be a silent wrong answer.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import { errorBody } from '../../error-handler.js'

/** Each resource's routes (as the e2b SDK calls them) and why they are missing. */
const unsupported = [
  {
    paths: ['/volumes', '/volumes/:volumeID'],
    message:
      'volumes are not supported by this server: sandboxes have no shared volume storage; copy files in with files.write',
  },
  {
    paths: ['/secrets', '/secrets/:secretID'],
    message:
      'secrets are not supported by this server: there is no secret store or egress proxy to resolve Secret.fill placeholders; pass values as envs',
  },
] as const

export function unsupportedRoutes(app: FastifyInstance): void {
  for (const { paths, message } of unsupported) {
    const answer = async (_request: unknown, reply: FastifyReply) =>
      reply.status(501).send(errorBody(501, message))
    for (const url of paths) {
      app.route({ method: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'], url, handler: answer })
    }
  }
}
