/**
 * The sandboxes resource over E2B's control-plane API: create, list (every filter, pages followed
 * transparently), get, kill, pause, connect (resumes a paused one), timeout and metrics.
 */
import { InvalidArgumentError } from '@sandcell/shared'
import type { HttpClient } from './http.js'
import {
  listedSandboxesSchema,
  sandboxDetailSchema,
  sandboxMetricsSchema,
  sandboxSchema,
  toNewSandboxBody,
  toWireSeconds,
  totalRunningSchema,
  type CreateSandboxOptions,
  type ListedSandbox,
  type Sandbox,
  type SandboxDetail,
  type SandboxMetric,
  type SandboxState,
} from './wire.js'

/** Options every call takes. */
export interface CallOptions {
  /** Aborts the request (and rejects with the signal's reason). */
  signal?: AbortSignal
}

export interface ListSandboxesOptions extends CallOptions {
  /** Only sandboxes in these states. @default both running and paused */
  state?: readonly SandboxState[]
  /** Only sandboxes whose metadata holds every one of these pairs. */
  metadata?: Readonly<Record<string, string>>
  /** Only sandboxes of this template (id or alias). */
  template?: string
  /** Only sandboxes started at or after this time. */
  startedAfter?: Date
  /** By start time. @default 'desc' (newest first) */
  order?: 'asc' | 'desc'
  /** Sandboxes per page (per request when iterating). @default the server's page size */
  limit?: number
  /** Where a previous page ended. */
  nextToken?: string
}

export interface SandboxPage {
  sandboxes: ListedSandbox[]
  /** Pass to the next call for the following page; absent on the last page. */
  nextToken?: string
  /** Running sandboxes matching the filters, before paging (when running ones were asked). */
  totalRunning?: number
}

/** A sandbox connected to; `resumed` is true when the call resumed it from pause. */
export interface ConnectedSandbox extends Sandbox {
  resumed: boolean
}

export interface ConnectOptions extends CallOptions {
  /** Keep it alive at least this long from now, ms; only ever extends. @default 300000 */
  timeoutMs?: number
}

export interface MetricsOptions extends CallOptions {
  /** Samples from this time on. */
  start?: Date
  /** Samples up to this time. */
  end?: Date
}

export interface SandboxesApi {
  /** Starts a sandbox. @throws NotFoundError for an unknown template, InvalidArgumentError… */
  create(options?: CreateSandboxOptions & CallOptions): Promise<Sandbox>
  /** Every matching sandbox, fetching pages as the iteration goes. */
  list(options?: ListSandboxesOptions): AsyncIterable<ListedSandbox>
  /** One page of matching sandboxes. */
  listPage(options?: ListSandboxesOptions): Promise<SandboxPage>
  /** @throws SandboxNotFoundError when the sandbox does not exist or was killed. */
  get(sandboxId: string, options?: CallOptions): Promise<SandboxDetail>
  /** @throws SandboxNotFoundError when the sandbox does not exist or was killed. */
  kill(sandboxId: string, options?: CallOptions): Promise<void>
  /** @throws FailedPreconditionError when it is already paused, SandboxNotFoundError. */
  pause(sandboxId: string, options?: CallOptions): Promise<void>
  /** Connects to a sandbox, resuming it when paused. @throws SandboxNotFoundError */
  connect(sandboxId: string, options?: ConnectOptions): Promise<ConnectedSandbox>
  /** Sets the sandbox's deadline to `timeoutMs` from now (shorter or longer). */
  setTimeout(sandboxId: string, timeoutMs: number, options?: CallOptions): Promise<void>
  /** Resource samples of a sandbox, oldest first. */
  metrics(sandboxId: string, options?: MetricsOptions): Promise<SandboxMetric[]>
}

function sandboxPath(sandboxId: string, rest = ''): string {
  if (sandboxId === '') {
    throw new InvalidArgumentError('a sandbox id is required')
  }
  return `/sandboxes/${encodeURIComponent(sandboxId)}${rest}`
}

function positiveMs(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new InvalidArgumentError(`${name} must be a positive number of ms, got ${value}`)
  }
  return value
}

/**
 * The metadata filter exactly as the e2b SDK sends it: each key and value percent-encoded, then
 * joined as a form (`k=v&k2=v2`), and the whole sent as one (again encoded) query value.
 */
export function encodeMetadataFilter(metadata: Readonly<Record<string, string>>): string {
  return new URLSearchParams(
    Object.entries(metadata).map(([key, value]): [string, string] => [
      encodeURIComponent(key),
      encodeURIComponent(value),
    ]),
  ).toString()
}

/** The list query in E2B's names; `state` is one comma-separated value (form, not exploded). */
export function listQuery(options: ListSandboxesOptions): Record<string, string | undefined> {
  if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 1)) {
    throw new InvalidArgumentError(`limit must be a positive integer, got ${options.limit}`)
  }
  const metadata = options.metadata ?? {}
  return {
    state:
      options.state === undefined || options.state.length === 0
        ? undefined
        : options.state.join(','),
    metadata: Object.keys(metadata).length === 0 ? undefined : encodeMetadataFilter(metadata),
    template: options.template,
    startedAfter: options.startedAfter?.toISOString(),
    order: options.order,
    limit: options.limit === undefined ? undefined : String(options.limit),
    nextToken: options.nextToken,
  }
}

export function createSandboxesApi(http: HttpClient): SandboxesApi {
  async function listPage(options: ListSandboxesOptions = {}): Promise<SandboxPage> {
    const { headers, body } = await http.requestJson(
      { method: 'GET', path: '/v2/sandboxes', query: listQuery(options), signal: options.signal },
      listedSandboxesSchema,
    )
    const nextToken = headers.get('x-next-token') ?? ''
    const total = totalRunningSchema.safeParse(headers.get('x-total-running') ?? undefined)
    return {
      sandboxes: body,
      ...(nextToken === '' ? {} : { nextToken }),
      ...(total.success && total.data !== undefined ? { totalRunning: total.data } : {}),
    }
  }

  return {
    async create(options = {}) {
      if (options.timeoutMs !== undefined) {
        positiveMs('timeoutMs', options.timeoutMs)
      }
      const { body } = await http.requestJson(
        {
          method: 'POST',
          path: '/v2/sandboxes',
          json: toNewSandboxBody(options),
          signal: options.signal,
        },
        sandboxSchema,
      )
      return body
    },

    async *list(options = {}) {
      let nextToken = options.nextToken
      do {
        const page = await listPage({
          ...options,
          ...(nextToken === undefined ? {} : { nextToken }),
        })
        yield* page.sandboxes
        nextToken = page.nextToken
      } while (nextToken !== undefined)
    },

    listPage,

    async get(sandboxId, options = {}) {
      const { body } = await http.requestJson(
        { method: 'GET', path: sandboxPath(sandboxId), sandboxId, signal: options.signal },
        sandboxDetailSchema,
      )
      return body
    },

    async kill(sandboxId, options = {}) {
      await http.request({
        method: 'DELETE',
        path: sandboxPath(sandboxId),
        sandboxId,
        signal: options.signal,
      })
    },

    async pause(sandboxId, options = {}) {
      await http.request({
        method: 'POST',
        path: sandboxPath(sandboxId, '/pause'),
        sandboxId,
        signal: options.signal,
      })
    },

    async connect(sandboxId, options = {}) {
      const json =
        options.timeoutMs === undefined
          ? {}
          : { timeout: toWireSeconds(positiveMs('timeoutMs', options.timeoutMs)) }
      const { status, body } = await http.requestJson(
        {
          method: 'POST',
          path: `/v2${sandboxPath(sandboxId, '/connect')}`,
          json,
          sandboxId,
          signal: options.signal,
        },
        sandboxSchema,
      )
      return { ...body, resumed: status === 201 }
    },

    async setTimeout(sandboxId, timeoutMs, options = {}) {
      await http.request({
        method: 'POST',
        path: sandboxPath(sandboxId, '/timeout'),
        json: { timeout: toWireSeconds(positiveMs('timeoutMs', timeoutMs)) },
        sandboxId,
        signal: options.signal,
      })
    },

    async metrics(sandboxId, options = {}) {
      const seconds = (at: Date | undefined): string | undefined =>
        at === undefined ? undefined : String(Math.round(at.getTime() / 1000))
      const { body } = await http.requestJson(
        {
          method: 'GET',
          path: sandboxPath(sandboxId, '/metrics'),
          query: { start: seconds(options.start), end: seconds(options.end) },
          sandboxId,
          signal: options.signal,
        },
        sandboxMetricsSchema,
      )
      return body
    },
  }
}
