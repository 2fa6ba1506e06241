/**
 * The templates resource over E2B's template API, for tools that manage built templates: list,
 * get with builds, resolve a name, delete, tags, and a build's status with its log read page by
 * page (followed to the build's end as the e2b SDK's `Template.build` does). Starting a build is
 * the e2b SDK's part (`Template.build`), which hashes and uploads the build context.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { z } from 'zod'
import { InvalidArgumentError } from '@sandcell/shared'
import type { HttpClient } from './http.js'
import type { CallOptions } from './sandboxes.js'

const date = z.iso.datetime({ offset: true }).transform((value) => new Date(value))
const count = z.number().int().nonnegative()
// Absent and null alike become undefined, so optional fields can be left out.
const optionalDate = date.nullish().transform((value) => value ?? undefined)
const optionalCount = count.nullish().transform((value) => value ?? undefined)
const optionalString = z
  .string()
  .nullish()
  .transform((value) => value ?? undefined)
const buildStatusSchema = z.enum(['waiting', 'building', 'ready', 'error'])

/** Where a build is: `waiting` until started, `building`, then `ready` or `error`. */
export type TemplateBuildStatus = z.output<typeof buildStatusSchema>

const logEntrySchema = z
  .object({
    timestamp: date,
    level: z.enum(['debug', 'info', 'warn', 'error']),
    message: z.string(),
    step: optionalString,
  })
  .transform(({ step, ...entry }) => ({ ...entry, ...(step === undefined ? {} : { step }) }))

/**
 * One line of a build's log. `step` is `base` (the image or template it starts from), `1`…`n`
 * (the n-th step of the build) or `finalize`; lines of the build as a whole have none.
 */
export type BuildLogEntry = z.output<typeof logEntrySchema>

const templateWire = {
  templateID: z.string().min(1),
  buildID: z.string(),
  names: z.array(z.string()).nullish(),
  aliases: z.array(z.string()).nullish(),
  public: z.boolean(),
  buildStatus: buildStatusSchema,
  buildCount: count,
  spawnCount: count,
  lastSpawnedAt: optionalDate,
  cpuCount: count,
  memoryMB: count,
  diskSizeMB: optionalCount,
  envdVersion: optionalString,
  createdAt: date,
  updatedAt: date,
}

type TemplateWire = z.output<z.ZodObject<typeof templateWire>>

/** A template as the list shows it; its current build is the newest ready one, else the newest. */
export interface TemplateSummary {
  templateId: string
  /** The current build; empty when the template has none yet. */
  buildId: string
  /** Its names (`namespace/alias` on E2B, the alias on sandcell). */
  names: string[]
  aliases: string[]
  public: boolean
  /** Status of the current build. */
  buildStatus: TemplateBuildStatus
  buildCount: number
  spawnCount: number
  lastSpawnedAt?: Date
  cpuCount: number
  memoryMiB: number
  diskSizeMiB?: number
  envdVersion?: string
  createdAt: Date
  updatedAt: Date
}

function toSummary(wire: TemplateWire): TemplateSummary {
  return {
    templateId: wire.templateID,
    buildId: wire.buildID,
    names: wire.names ?? wire.aliases ?? [],
    aliases: wire.aliases ?? [],
    public: wire.public,
    buildStatus: wire.buildStatus,
    buildCount: wire.buildCount,
    spawnCount: wire.spawnCount,
    ...(wire.lastSpawnedAt === undefined ? {} : { lastSpawnedAt: wire.lastSpawnedAt }),
    cpuCount: wire.cpuCount,
    memoryMiB: wire.memoryMB,
    ...(wire.diskSizeMB === undefined ? {} : { diskSizeMiB: wire.diskSizeMB }),
    ...(wire.envdVersion === undefined ? {} : { envdVersion: wire.envdVersion }),
    createdAt: wire.createdAt,
    updatedAt: wire.updatedAt,
  }
}

const templatesSchema = z.array(z.object(templateWire).transform(toSummary))

const buildSchema = z
  .object({
    buildID: z.string().min(1),
    status: buildStatusSchema,
    createdAt: date,
    updatedAt: date,
    finishedAt: optionalDate,
    cpuCount: count,
    memoryMB: count,
  })
  .transform((wire) => ({
    buildId: wire.buildID,
    status: wire.status,
    createdAt: wire.createdAt,
    updatedAt: wire.updatedAt,
    ...(wire.finishedAt === undefined ? {} : { finishedAt: wire.finishedAt }),
    cpuCount: wire.cpuCount,
    memoryMiB: wire.memoryMB,
  }))

/** One build of a template; `finishedAt` once it is ready or failed. */
export type TemplateBuild = z.output<typeof buildSchema>

/** A template with every build, oldest first. */
export interface TemplateDetail extends TemplateSummary {
  builds: TemplateBuild[]
}

const detailSchema = z
  .object({ ...templateWire, builds: z.array(buildSchema) })
  .transform((wire): TemplateDetail => ({ ...toSummary(wire), builds: wire.builds }))

const aliasSchema = z
  .object({ templateID: z.string().min(1), public: z.boolean() })
  .transform((wire) => ({ templateId: wire.templateID, public: wire.public }))

const tagsSchema = z.array(
  z
    .object({ tag: z.string(), buildID: z.string(), createdAt: date })
    .transform((wire) => ({ tag: wire.tag, buildId: wire.buildID, createdAt: wire.createdAt })),
)

/** A tag and the ready build it names. */
export type TemplateTag = z.output<typeof tagsSchema>[number]

const statusPageSchema = z
  .object({
    templateID: z.string(),
    buildID: z.string(),
    status: buildStatusSchema,
    logEntries: z.array(logEntrySchema),
    reason: z
      .object({
        message: z.string(),
        step: optionalString,
        logEntries: z.array(logEntrySchema).nullish(),
      })
      .nullish(),
  })
  .transform((wire) => ({
    templateId: wire.templateID,
    buildId: wire.buildID,
    status: wire.status,
    logEntries: wire.logEntries,
    ...(wire.reason === undefined || wire.reason === null
      ? {}
      : {
          reason: {
            message: wire.reason.message,
            ...(wire.reason.step === undefined ? {} : { step: wire.reason.step }),
            logEntries: wire.reason.logEntries ?? [],
          },
        }),
  }))

/**
 * A build's status and one page of its log. A failed build has a `reason`: the message, the
 * step that failed and that step's warnings and errors.
 */
export type BuildStatusPage = z.output<typeof statusPageSchema>

export interface BuildStatusOptions extends CallOptions {
  /** Index of the first log line to return. @default 0 */
  logsOffset?: number
}

export interface ReadBuildLogOptions extends BuildStatusOptions {
  /** Gets each log line, in order. */
  onLog: (entry: BuildLogEntry) => void
  /**
   * Keep polling until the build is ready or failed and its log is read to the end; otherwise
   * stop at the end of the log written so far.
   * @default false
   */
  follow?: boolean
  /** Pause between polls of a log that has nothing new, ms. @default 200 (the e2b SDK's) */
  pollIntervalMs?: number
}

export interface TemplatesApi {
  /** Every template, pages followed. */
  list(options?: CallOptions): Promise<TemplateSummary[]>
  /** A template (by id, or by name on sandcell) with its builds. @throws NotFoundError */
  get(templateId: string, options?: CallOptions): Promise<TemplateDetail>
  /**
   * The template a name (`alias` or `alias:tag`) stands for; with a tag, the tag must exist.
   * @throws NotFoundError
   */
  resolveName(name: string, options?: CallOptions): Promise<{ templateId: string; public: boolean }>
  /** Deletes a template and all its builds. @throws NotFoundError */
  delete(templateId: string, options?: CallOptions): Promise<void>
  /** The template's tags, each with the ready build it names. */
  tags(templateId: string, options?: CallOptions): Promise<TemplateTag[]>
  /** A build's status and its log from `logsOffset` (one page). @throws InvalidArgumentError for an unknown build, as E2B answers */
  buildStatus(
    templateId: string,
    buildId: string,
    options?: BuildStatusOptions,
  ): Promise<BuildStatusPage>
  /**
   * Reads a build's log page by page into `onLog`; with `follow`, until the build has ended.
   * @returns the status of the last poll (its `logEntries` empty: the log was read to its end)
   */
  readBuildLog(
    templateId: string,
    buildId: string,
    options: ReadBuildLogOptions,
  ): Promise<BuildStatusPage>
}

function templatePath(templateId: string, rest = ''): string {
  if (templateId === '') {
    throw new InvalidArgumentError('a template id is required')
  }
  return `/templates/${encodeURIComponent(templateId)}${rest}`
}

export function createTemplatesApi(http: HttpClient): TemplatesApi {
  async function buildStatus(
    templateId: string,
    buildId: string,
    options: BuildStatusOptions = {},
  ): Promise<BuildStatusPage> {
    const { body } = await http.requestJson(
      {
        method: 'GET',
        path: templatePath(templateId, `/builds/${encodeURIComponent(buildId)}/status`),
        query: { logsOffset: String(options.logsOffset ?? 0) },
        signal: options.signal,
      },
      statusPageSchema,
    )
    return body
  }

  return {
    async list(options = {}) {
      const templates: TemplateSummary[] = []
      let nextToken: string | undefined
      do {
        const { headers, body } = await http.requestJson(
          { method: 'GET', path: '/v2/templates', query: { nextToken }, signal: options.signal },
          templatesSchema,
        )
        templates.push(...body)
        const token = headers.get('x-next-token') ?? ''
        nextToken = token === '' ? undefined : token
      } while (nextToken !== undefined)
      return templates
    },

    async get(templateId, options = {}) {
      const { body } = await http.requestJson(
        { method: 'GET', path: templatePath(templateId), signal: options.signal },
        detailSchema,
      )
      return body
    },

    async resolveName(name, options = {}) {
      if (name === '') {
        throw new InvalidArgumentError('a template name is required')
      }
      const { body } = await http.requestJson(
        {
          method: 'GET',
          path: `/templates/aliases/${encodeURIComponent(name)}`,
          signal: options.signal,
        },
        aliasSchema,
      )
      return body
    },

    async delete(templateId, options = {}) {
      await http.request({
        method: 'DELETE',
        path: templatePath(templateId),
        signal: options.signal,
      })
    },

    async tags(templateId, options = {}) {
      const { body } = await http.requestJson(
        { method: 'GET', path: templatePath(templateId, '/tags'), signal: options.signal },
        tagsSchema,
      )
      return body
    },

    buildStatus,

    async readBuildLog(templateId, buildId, options) {
      let logsOffset = options.logsOffset ?? 0
      for (;;) {
        const page = await buildStatus(templateId, buildId, { ...options, logsOffset })
        logsOffset += page.logEntries.length
        page.logEntries.forEach(options.onLog)
        if (page.logEntries.length > 0) {
          continue
        }
        // An ended build's log is complete once a poll brings nothing new (E2B's contract).
        if (options.follow !== true || page.status === 'ready' || page.status === 'error') {
          return page
        }
        await sleep(options.pollIntervalMs ?? 200, undefined, { signal: options.signal })
      }
    },
  }
}
