/** E2B's snapshot and fork endpoints: filesystem snapshots usable as template ids. */
import type { FastifyInstance, FastifyReply } from 'fastify'
import { z } from 'zod'
import { envdVersion } from '@sandcell/protocol'
import { isSandcellError } from '@sandcell/shared'
import type { ServerConfig } from '../../config/schema.js'
import type { SandboxService } from '../../services/sandbox-service.js'
import type { SnapshotRecord } from '../../store/sqlite-store.js'
import { sandboxIdParams, timeoutSeconds } from './sandboxes.js'

const snapshotBody = z.object({
  name: z
    .string()
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$/, 'letters, digits, ".", "_" and "-", at most 128')
    .optional(),
})
const forkBody = z.object({
  count: z
    .number({ error: 'count must be a number' })
    .int('count must be a whole number')
    .min(1, 'count must be between 1 and 100')
    .max(100, 'count must be between 1 and 100')
    .default(1),
  timeout: timeoutSeconds.optional(),
})
const listQuery = z.object({
  sandboxID: z.string().optional(),
  name: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(100).default(100),
  nextToken: z.string().optional(),
})

function snapshotJson(snapshot: SnapshotRecord) {
  return { snapshotID: snapshot.id, names: snapshot.names }
}

export function snapshotRoutes(
  app: FastifyInstance,
  options: { service: SandboxService; config: Readonly<ServerConfig> },
): void {
  const { service, config } = options

  app.post('/sandboxes/:sandboxID/snapshots', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { name } = snapshotBody.parse(request.body ?? {})
    const snapshot = await service.snapshot(sandboxID, name)
    return reply.status(201).send(snapshotJson(snapshot))
  })

  app.get('/snapshots', (request, reply) => {
    const query = listQuery.parse(request.query)
    let snapshots = service.listSnapshots({ sandboxId: query.sandboxID, name: query.name })
    if (query.nextToken !== undefined) {
      const index = snapshots.findIndex((s) => s.id === query.nextToken)
      snapshots = index === -1 ? [] : snapshots.slice(index + 1)
    }
    const page = snapshots.slice(0, query.limit)
    const last = page[page.length - 1]
    if (snapshots.length > query.limit && last !== undefined) {
      void reply.header('X-Next-Token', last.id)
    }
    return reply.send(page.map(snapshotJson))
  })

  const deleteSnapshot = (id: string, reply: FastifyReply) => {
    service.deleteSnapshot(id)
    return reply.status(204).send()
  }
  app.delete('/snapshots/:snapshotID', (request, reply) =>
    deleteSnapshot(
      z.object({ snapshotID: z.string().min(1) }).parse(request.params).snapshotID,
      reply,
    ),
  )
  // DELETE /templates/{id} (the SDK's `Sandbox.deleteSnapshot`) is in the template routes.

  app.post('/sandboxes/:sandboxID/fork', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { count, timeout } = forkBody.parse(request.body ?? {})
    const outcomes = await service.fork(sandboxID, count, timeout)
    return reply.status(201).send(
      outcomes.map((outcome) =>
        'record' in outcome
          ? {
              sandbox: {
                sandboxID: outcome.record.id,
                templateID: outcome.record.templateId,
                clientID: outcome.record.clientId,
                envdVersion,
                envdAccessToken: outcome.record.envdAccessToken,
                trafficAccessToken: outcome.record.trafficAccessToken,
                domain: config.domain,
              },
            }
          : {
              error: {
                code: isSandcellError(outcome.error) ? outcome.error.status : 500,
                message: outcome.error.message,
              },
            },
      ),
    )
  })
}
