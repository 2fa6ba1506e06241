/**
 * E2B's template API as the SDK's `Template` calls it: build requests, file links and uploads,
 * build start and status, aliases, tags, listing, publishing and deletion.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { z } from 'zod'
import { envdVersion } from '@sandcell/protocol'
import { NotFoundError } from '@sandcell/shared'
import type { SandboxService } from '../../services/sandbox-service.js'
import type { TemplateService } from '../../services/template-service.js'
import type { BuildRecord, TemplateRecord } from '../../store/template-store.js'

const templateParams = z.object({ templateID: z.string().min(1).max(256) })
const buildParams = templateParams.extend({ buildID: z.string().min(1).max(64) })
const fileParams = templateParams.extend({ hash: z.string().min(1).max(128) })

const buildRequestBody = z.looseObject({
  name: z.string().min(1).max(256).optional(),
  alias: z.string().min(1).max(256).optional(),
  tags: z.array(z.string().min(1).max(128)).max(100).optional(),
  cpuCount: z.number().int().min(1).max(64).optional(),
  memoryMB: z
    .number()
    .int()
    .min(128)
    .max(1024 * 1024)
    .optional(),
})
const statusQuery = z.object({
  logsOffset: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(100).default(100),
  level: z.enum(['debug', 'info', 'warn', 'error']).optional(),
})
const logsQuery = z.object({
  cursor: z.coerce.number().int().min(0).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  direction: z.enum(['forward', 'backward']).default('forward'),
  level: z.enum(['debug', 'info', 'warn', 'error']).optional(),
})
const uploadQuery = z.object({ expires: z.string().optional(), signature: z.string().optional() })
const assignTagsBody = z.object({
  target: z.string().min(1).max(256),
  tags: z.array(z.string().min(1).max(128)).min(1).max(100),
})
const removeTagsBody = z.object({
  name: z.string().min(1).max(256),
  tags: z.array(z.string().min(1).max(128)).min(1).max(100),
})
const publishBody = z.object({ public: z.boolean() })
const listQuery = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(100),
  nextToken: z.string().optional(),
})

const levelRank = { debug: 0, info: 1, warn: 2, error: 3 } as const

/** The build a listing shows: the newest ready one, else the newest. */
function currentBuild(builds: readonly BuildRecord[]): BuildRecord | undefined {
  return builds.findLast((build) => build.status === 'ready') ?? builds.at(-1)
}

function buildJson(build: BuildRecord) {
  return {
    buildID: build.id,
    status: build.status,
    createdAt: new Date(build.createdAt).toISOString(),
    updatedAt: new Date(build.updatedAt).toISOString(),
    ...(build.finishedAt === null ? {} : { finishedAt: new Date(build.finishedAt).toISOString() }),
    cpuCount: build.cpuCount,
    memoryMB: build.memoryMB,
    diskSizeMB: build.diskMB,
    envdVersion,
  }
}

function templateJson(template: TemplateRecord, builds: readonly BuildRecord[]) {
  const build = currentBuild(builds)
  return {
    templateID: template.id,
    buildID: build?.id ?? '',
    names: [template.alias],
    aliases: [template.alias],
    public: template.public,
    buildStatus: build?.status ?? 'waiting',
    buildCount: builds.length,
    spawnCount: template.spawnCount,
    lastSpawnedAt:
      template.lastSpawnedAt === null ? null : new Date(template.lastSpawnedAt).toISOString(),
    cpuCount: build?.cpuCount ?? 0,
    memoryMB: build?.memoryMB ?? 0,
    diskSizeMB: build?.diskMB ?? 0,
    envdVersion,
    createdAt: new Date(template.createdAt).toISOString(),
    updatedAt: new Date(template.updatedAt).toISOString(),
    createdBy: null,
  }
}

/** This server's base URL as the client reached it (the upload link must point back here). */
function baseUrl(request: FastifyRequest): string {
  return `${request.protocol}://${request.host}`
}

export interface TemplateRoutesOptions {
  templates: TemplateService
  /** DELETE /templates/{id} also deletes sandbox snapshots (the SDK's `deleteSnapshot`). */
  sandboxes: SandboxService
}

export function templateRoutes(app: FastifyInstance, options: TemplateRoutesOptions): void {
  const { templates, sandboxes } = options

  app.post('/v3/templates', (request, reply) => {
    const body = buildRequestBody.parse(request.body ?? {})
    const name = body.name ?? body.alias
    if (name === undefined) {
      return reply.status(400).send({ code: 400, message: 'name is required' })
    }
    const { template, build, tags } = templates.requestBuild({
      name,
      tags: body.tags,
      cpuCount: body.cpuCount,
      memoryMB: body.memoryMB,
    })
    return reply.status(202).send({
      templateID: template.id,
      buildID: build.id,
      names: [template.alias],
      aliases: [template.alias],
      tags,
      public: template.public,
    })
  })

  app.get('/templates/:templateID/files/:hash', (request, reply) => {
    const { templateID, hash } = fileParams.parse(request.params)
    const link = templates.fileLink(templateID, hash)
    return reply.status(201).send({
      present: link.present,
      url: `${baseUrl(request)}/templates/${encodeURIComponent(templateID)}/files/${hash}/upload?${link.query}`,
    })
  })

  // The SDK streams any bytes (a tar, gzip or not) under any content type: taken raw.
  void app.register((scope, _options, done) => {
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('*', (_request, _payload, parsed) => parsed(null))
    scope.put('/templates/:templateID/files/:hash/upload', async (request, reply) => {
      const { templateID, hash } = fileParams.parse(request.params)
      await templates.upload(templateID, hash, uploadQuery.parse(request.query), request.raw)
      return reply.status(201).send()
    })
    done()
  })

  app.post('/v2/templates/:templateID/builds/:buildID', (request, reply) => {
    const { templateID, buildID } = buildParams.parse(request.params)
    templates.startBuild(templateID, buildID, request.body ?? {})
    return reply.status(202).send()
  })

  app.get('/templates/:templateID/builds/:buildID/status', (request) => {
    const { templateID, buildID } = buildParams.parse(request.params)
    const query = statusQuery.parse(request.query)
    const { build, logEntries, reasonEntries } = templates.status(
      templateID,
      buildID,
      query.logsOffset,
      query.limit,
    )
    const minimum = query.level === undefined ? 0 : levelRank[query.level]
    return {
      templateID: build.templateId,
      buildID: build.id,
      status: build.status,
      logEntries: logEntries.filter((entry) => levelRank[entry.level] >= minimum),
      logs: [],
      ...(build.reason === null
        ? {}
        : {
            reason: {
              message: build.reason.message,
              ...(build.reason.step === undefined ? {} : { step: build.reason.step }),
              logEntries: reasonEntries,
            },
          }),
    }
  })

  app.get('/templates/:templateID/builds/:buildID/logs', (request) => {
    const { templateID, buildID } = buildParams.parse(request.params)
    const query = logsQuery.parse(request.query)
    const minimum = query.level === undefined ? 0 : levelRank[query.level]
    const all: ReturnType<typeof templates.status>['logEntries'] = []
    for (let offset = 0; ;) {
      const page = templates.status(templateID, buildID, offset).logEntries
      all.push(...page)
      offset += page.length
      if (page.length === 0) {
        break
      }
    }
    const cursor = query.cursor
    const selected = all.filter(
      (entry) =>
        levelRank[entry.level] >= minimum &&
        (cursor === undefined ||
          (query.direction === 'forward'
            ? Date.parse(entry.timestamp) >= cursor
            : Date.parse(entry.timestamp) <= cursor)),
    )
    const ordered = query.direction === 'forward' ? selected : selected.reverse()
    return { logs: ordered.slice(0, query.limit) }
  })

  app.get('/templates/aliases/:alias', (request) => {
    const { alias } = z.object({ alias: z.string().min(1).max(256) }).parse(request.params)
    const { template } = templates.resolveAlias(alias)
    return { templateID: template.id, public: template.public }
  })

  app.post('/templates/tags', (request, reply) => {
    const body = assignTagsBody.parse(request.body ?? {})
    const { buildId, tags } = templates.assignTags(body.target, body.tags)
    return reply.status(201).send({ buildID: buildId, tags })
  })

  app.delete('/templates/tags', (request, reply) => {
    const body = removeTagsBody.parse(request.body ?? {})
    templates.removeTags(body.name, body.tags)
    return reply.status(204).send()
  })

  app.get('/templates/:templateID/tags', (request) => {
    const { templateID } = templateParams.parse(request.params)
    return templates.tags(templateID).map((tag) => ({
      tag: tag.tag,
      buildID: tag.buildId,
      createdAt: new Date(tag.assignedAt).toISOString(),
    }))
  })

  const list = (
    request: FastifyRequest,
    reply: { header(name: string, value: string): unknown },
  ) => {
    const query = listQuery.parse(request.query)
    let all = templates.listTemplates()
    if (query.nextToken !== undefined) {
      const index = all.findIndex(({ template }) => template.id === query.nextToken)
      all = index === -1 ? [] : all.slice(index + 1)
    }
    const page = all.slice(0, query.limit)
    const last = page.at(-1)
    if (all.length > query.limit && last !== undefined) {
      reply.header('X-Next-Token', last.template.id)
    }
    return page.map(({ template, builds }) => templateJson(template, builds))
  }
  app.get('/templates', (request, reply) => list(request, reply))
  app.get('/v2/templates', (request, reply) => list(request, reply))

  app.get('/templates/:templateID', (request) => {
    const { templateID } = templateParams.parse(request.params)
    const { template, builds } = templates.getTemplate(templateID)
    return { ...templateJson(template, builds), builds: builds.map(buildJson) }
  })

  const publish = (request: FastifyRequest) => {
    const { templateID } = templateParams.parse(request.params)
    const template = templates.setPublic(templateID, publishBody.parse(request.body ?? {}).public)
    return { names: [template.alias] }
  }
  app.patch('/v2/templates/:templateID', publish)
  app.patch('/templates/:templateID', publish)

  app.delete('/templates/:templateID', async (request, reply) => {
    const { templateID } = templateParams.parse(request.params)
    try {
      sandboxes.deleteSnapshot(templateID)
    } catch (err) {
      if (!(err instanceof NotFoundError)) {
        throw err
      }
      await templates.deleteTemplate(templateID)
    }
    return reply.status(204).send()
  })
}
