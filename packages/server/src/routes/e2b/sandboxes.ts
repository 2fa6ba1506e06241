/**
 * E2B's sandbox endpoints, as the official `e2b` SDK calls them (paths, JSON field names and
 * status codes from its bundled OpenAPI types), over the sandbox service.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import { z } from 'zod'
import { envdVersion } from '@sandcell/protocol'
import { driverKinds } from '@sandcell/runtime'
import { FailedPreconditionError, InvalidArgumentError } from '@sandcell/shared'
import type { ServerConfig } from '../../config/schema.js'
import type { MetricSample, SandboxService } from '../../services/sandbox-service.js'
import type { SandboxRecord } from '../../store/sqlite-store.js'
import {
  networkSchema,
  networkUpdateSchema,
  parseCreateNetwork,
  parseNetworkUpdate,
  type NetworkDefaults,
} from './network-input.js'
import { listQuerySchema, listSandboxes, type ListOptions } from './sandbox-list.js'

/** Metadata and env vars: string keys to string values, as E2B's API takes them. */
const stringMap = z.record(z.string(), z.string({ error: 'values must be strings' }), {
  error: 'must be an object of strings',
})

/**
 * A lifetime in whole seconds, as the SDK sends one (its milliseconds rounded up; NaN and
 * Infinity arrive as null). The upper bound is the server's, checked by the service.
 */
export const timeoutSeconds = z
  .number({ error: 'timeout must be a number of seconds' })
  .int('timeout must be whole seconds')
  .min(1, 'timeout must be at least 1 second')

/** E2B's `memory` flag of pause and resume: false keeps (or resumes from) the filesystem only. */
const memoryFlag = z.boolean({ error: 'memory must be true or false' }).optional()

/**
 * The metadata key that picks a sandbox's isolation (container, qemu, firecracker): E2B's create
 * request has no field for it, and metadata is what every SDK passes through unchanged.
 */
export const driverMetadataKey = 'sandcell.driver'
const driverSchema = z.enum(driverKinds, {
  error: (issue) =>
    `metadata.${driverMetadataKey} must be container, qemu or firecracker, not ${JSON.stringify(issue.input)}`,
})

const newSandboxSchema = z.object({
  templateID: z
    .string({ error: 'templateID is required' })
    .min(1, 'templateID is required')
    .max(256, 'templateID is at most 256 characters'),
  timeout: timeoutSeconds.optional(),
  metadata: stringMap.optional(),
  envVars: stringMap.optional(),
  autoPause: z.boolean({ error: 'autoPause must be true or false' }).optional(),
  autoPauseMemory: z.boolean({ error: 'autoPauseMemory must be true or false' }).optional(),
  autoResume: z
    .object(
      { enabled: z.boolean({ error: 'autoResume.enabled must be true or false' }) },
      { error: 'autoResume must be an object with enabled' },
    )
    .optional(),
  allow_internet_access: z.boolean().optional(),
  network: networkSchema.optional(),
  secure: z.boolean().optional(),
  volumeMounts: z.array(z.looseObject({})).optional(),
  mcp: z.unknown().optional(),
  iam: z.looseObject({ tokens: z.record(z.string(), z.unknown()).optional() }).optional(),
})

const timeoutBodySchema = z.object({ timeout: timeoutSeconds })
const connectBodySchema = z.object({ timeout: timeoutSeconds.optional(), memory: memoryFlag })
const pauseBodySchema = z.object({ memory: memoryFlag })
const resumeBodySchema = z.object({
  timeout: timeoutSeconds.optional(),
  autoPause: z.boolean().optional(),
  memory: memoryFlag,
})
const refreshBodySchema = z.object({ duration: z.number().int().min(0).max(3600).optional() })
/** A sandbox's id in the path; an empty one names no sandbox (a 404, SandboxNotFoundError). */
export const sandboxIdParams = z.object({ sandboxID: z.string() })
const unixSeconds = z.coerce
  .number({ error: 'must be a Unix time in seconds' })
  .int('must be a Unix time in whole seconds')
const metricsQuery = z
  .object({ start: unixSeconds.optional(), end: unixSeconds.optional() })
  .refine((q) => q.start === undefined || q.end === undefined || q.start <= q.end, {
    error: 'start must not be after end',
    path: ['start'],
  })

export interface SandboxRoutesOptions {
  service: SandboxService
  config: Readonly<ServerConfig>
  /** The built template a reference names, for the list's template filter ({@link ListOptions}). */
  templateIdOf: ListOptions['templateIdOf']
}

export function sandboxRoutes(app: FastifyInstance, options: SandboxRoutesOptions): void {
  const { service, config, templateIdOf } = options
  const networkDefaults: NetworkDefaults = {
    enabled: config.network.enabled,
    internet: config.network.internet,
  }

  const sandboxJson = (record: SandboxRecord) => ({
    sandboxID: record.id,
    templateID: record.templateId,
    clientID: record.clientId,
    envdVersion,
    envdAccessToken: record.envdAccessToken,
    trafficAccessToken: record.trafficAccessToken,
    domain: config.domain,
  })

  const listedJson = (record: SandboxRecord) => ({
    sandboxID: record.id,
    templateID: record.templateId,
    clientID: record.clientId,
    state: record.state,
    startedAt: new Date(record.startedAt).toISOString(),
    endAt: new Date(record.endAt).toISOString(),
    cpuCount: Math.max(1, Math.ceil(record.limits.cpus)),
    memoryMB: record.limits.memoryMiB,
    diskSizeMB: record.limits.diskMiB,
    metadata: record.metadata,
    envdVersion,
    volumeMounts: [],
  })

  const detailJson = (record: SandboxRecord) => ({
    ...listedJson(record),
    envdAccessToken: record.envdAccessToken,
    domain: config.domain,
    allowInternetAccess: record.allowInternetAccess,
    ...(record.network === null ? {} : { network: record.network }),
    lifecycle: { autoResume: record.autoResume, onTimeout: record.onTimeout },
  })

  const metricJson = (sample: MetricSample) => ({
    timestamp: new Date(sample.timestampMs).toISOString(),
    timestampUnix: Math.floor(sample.timestampMs / 1000),
    cpuCount: sample.cpuCount,
    cpuUsedPct: sample.cpuUsedPct,
    memUsed: sample.memUsed,
    memTotal: sample.memTotal,
    memCache: sample.memCache,
    diskUsed: sample.diskUsed,
    diskTotal: sample.diskTotal,
  })

  const create = async (body: unknown, reply: FastifyReply) => {
    const input = newSandboxSchema.parse(body)
    if ((input.volumeMounts?.length ?? 0) > 0) {
      throw new InvalidArgumentError('volume mounts are not supported by this server')
    }
    if (Object.keys(input.iam?.tokens ?? {}).length > 0) {
      throw new InvalidArgumentError(
        'iam workload identity tokens are not supported by this server: it issues no workload tokens (and has no network.rules transforms to carry them)',
      )
    }
    if (input.autoResume?.enabled === true && input.autoPauseMemory === false) {
      throw new InvalidArgumentError(
        'autoResume cannot be combined with autoPauseMemory false: a sandbox paused keeping its filesystem only is resumed with Sandbox.connect(), as on E2B',
      )
    }
    const driver = input.metadata?.[driverMetadataKey]
    const network = parseCreateNetwork(input.network, input.allow_internet_access, networkDefaults)
    const record = await service.create({
      templateId: input.templateID,
      driver: driver === undefined ? undefined : driverSchema.parse(driver),
      timeoutS: input.timeout,
      metadata: input.metadata,
      envVars: input.envVars,
      onTimeout: input.autoPause === true ? 'pause' : 'kill',
      autoPauseMemory: input.autoPauseMemory ?? true,
      autoResume: input.autoResume?.enabled ?? false,
      network,
    })
    return reply.status(201).send(sandboxJson(record))
  }
  app.post('/sandboxes', (request, reply) => create(request.body, reply))
  app.post('/v2/sandboxes', (request, reply) => create(request.body, reply))

  const list = (
    query: unknown,
    reply: FastifyReply,
    defaultStates: ListOptions['defaultStates'],
  ) => {
    const page = listSandboxes(service.list(), listQuerySchema.parse(query), {
      defaultStates,
      templateIdOf,
    })
    if (page.nextToken !== undefined) {
      void reply.header('X-Next-Token', page.nextToken)
    }
    void reply.header('X-Total-Running', String(service.counts().running))
    return reply.send(page.records.map(listedJson))
  }
  // The v1 list shows running sandboxes only, as E2B's did.
  app.get('/sandboxes', (request, reply) => list(request.query, reply, ['running']))
  app.get('/v2/sandboxes', (request, reply) => list(request.query, reply, ['running', 'paused']))

  app.get('/sandboxes/:sandboxID', (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    return reply.send(detailJson(service.get(sandboxID)))
  })

  app.delete('/sandboxes/:sandboxID', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    await service.kill(sandboxID)
    return reply.status(204).send()
  })

  app.post('/sandboxes/:sandboxID/timeout', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { timeout } = timeoutBodySchema.parse(request.body)
    await service.setTimeout(sandboxID, timeout)
    return reply.status(204).send()
  })

  app.post('/sandboxes/:sandboxID/refreshes', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { duration } = refreshBodySchema.parse(request.body ?? {})
    await service.connect(
      sandboxID,
      duration === undefined || duration === 0 ? undefined : duration,
    )
    return reply.status(204).send()
  })

  app.post('/sandboxes/:sandboxID/pause', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { memory } = pauseBodySchema.parse(request.body ?? {})
    await service.pause(sandboxID, { memory: memory ?? true })
    return reply.status(204).send()
  })

  const connect = async (params: unknown, body: unknown, reply: FastifyReply) => {
    const { sandboxID } = sandboxIdParams.parse(params)
    const { timeout, memory } = connectBodySchema.parse(body ?? {})
    const { record, resumed } = await service.connect(sandboxID, timeout, {
      memory: memory ?? true,
    })
    return reply.status(resumed ? 201 : 200).send(sandboxJson(record))
  }
  app.post('/sandboxes/:sandboxID/connect', (request, reply) =>
    connect(request.params, request.body, reply),
  )
  app.post('/v2/sandboxes/:sandboxID/connect', (request, reply) =>
    connect(request.params, request.body, reply),
  )

  // Older SDKs resume explicitly; resuming a running sandbox is a conflict there.
  app.post('/sandboxes/:sandboxID/resume', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { timeout, memory } = resumeBodySchema.parse(request.body ?? {})
    if (service.get(sandboxID).state === 'running') {
      throw new FailedPreconditionError(`sandbox ${sandboxID} is already running`)
    }
    const { record } = await service.connect(sandboxID, timeout, { memory: memory ?? true })
    return reply.status(201).send(sandboxJson(record))
  })

  app.get('/sandboxes/:sandboxID/metrics', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const { start, end } = metricsQuery.parse(request.query)
    const samples = await service.metrics(
      sandboxID,
      start === undefined ? undefined : start * 1000,
      end === undefined ? undefined : end * 1000,
    )
    return reply.send(samples.map(metricJson))
  })

  app.put('/sandboxes/:sandboxID/network', async (request, reply) => {
    const { sandboxID } = sandboxIdParams.parse(request.params)
    const body = networkUpdateSchema.parse(request.body ?? {})
    const current = service.get(sandboxID)
    await service.updateNetwork(
      sandboxID,
      parseNetworkUpdate(body, current.network, networkDefaults),
    )
    return reply.status(204).send()
  })
}
