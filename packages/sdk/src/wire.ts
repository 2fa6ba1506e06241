/**
 * The one place where E2B's wire names (`sandboxID`, `memoryMB`, ISO date strings) meet the SDK's
 * domain names (`sandboxId`, `memoryMiB`, `Date`): zod schemas of every response body, mapped.
 */
import { z } from 'zod'

/** State of a sandbox the server knows. */
export type SandboxState = 'running' | 'paused'

/** A sandbox as create and connect return it: what reaching its envd takes. */
export interface Sandbox {
  sandboxId: string
  templateId: string
  /** The template's alias, when it has one. */
  alias?: string
  /** Version of the agent (envd) in the sandbox; decides which envd features exist. */
  envdVersion: string
  /** Token for the sandbox's envd (`X-Access-Token`); secret. */
  envdAccessToken?: string
  /** Token for traffic to the sandbox's other ports through the proxy; secret. */
  trafficAccessToken?: string
  /** Base domain of the sandbox's hosts (`<port>-<sandboxId>.<domain>`). */
  domain?: string
}

export interface VolumeMount {
  name: string
  path: string
}

/** A sandbox as the list returns it. */
export interface ListedSandbox {
  sandboxId: string
  templateId: string
  alias?: string
  state: SandboxState
  startedAt: Date
  /** When the sandbox is killed (or paused, with auto-pause) unless its timeout is extended. */
  endAt: Date
  cpuCount: number
  memoryMiB: number
  diskSizeMiB: number
  metadata: Record<string, string>
  envdVersion: string
  volumeMounts: VolumeMount[]
}

export interface SandboxNetwork {
  allowOut?: string[]
  denyOut?: string[]
  allowPublicTraffic?: boolean
  maskRequestHost?: string
}

export interface SandboxLifecycle {
  autoResume: boolean
  /** What the deadline does to the sandbox. */
  onTimeout: 'kill' | 'pause'
}

/** Everything the server says about one sandbox. */
export interface SandboxDetail extends ListedSandbox {
  envdAccessToken?: string
  domain?: string
  /** Null on the wire (not set explicitly) is left out. */
  allowInternetAccess?: boolean
  network?: SandboxNetwork
  lifecycle?: SandboxLifecycle
}

/** One sample of a sandbox's resource use. */
export interface SandboxMetric {
  timestamp: Date
  cpuCount: number
  cpuUsedPct: number
  memUsedBytes: number
  memTotalBytes: number
  memCacheBytes: number
  diskUsedBytes: number
  diskTotalBytes: number
}

const date = z.iso.datetime({ offset: true }).transform((value) => new Date(value))
const stateSchema = z.enum(['running', 'paused'])
const metadataSchema = z.record(z.string(), z.string())
const volumeMountSchema = z.object({ name: z.string(), path: z.string() })
const count = z.number().int().nonnegative()
const optionalString = z
  .string()
  .nullish()
  .transform((value) => value ?? undefined)

/** Copies the keys whose values are defined, so optional fields stay absent (not `undefined`). */
function defined<T extends object>(value: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]?: Exclude<T[K], undefined>
  }
}

/** E2B's `Sandbox` (201 from create, 200/201 from connect). */
export const sandboxSchema = z
  .object({
    sandboxID: z.string().min(1),
    templateID: z.string(),
    alias: optionalString,
    envdVersion: z.string(),
    envdAccessToken: optionalString,
    trafficAccessToken: optionalString,
    domain: optionalString,
  })
  .transform((wire): Sandbox => ({
    sandboxId: wire.sandboxID,
    templateId: wire.templateID,
    envdVersion: wire.envdVersion,
    ...defined({
      alias: wire.alias,
      envdAccessToken: wire.envdAccessToken,
      trafficAccessToken: wire.trafficAccessToken,
      domain: wire.domain,
    }),
  }))

const listedWire = {
  sandboxID: z.string().min(1),
  templateID: z.string(),
  alias: optionalString,
  state: stateSchema,
  startedAt: date,
  endAt: date,
  cpuCount: count,
  memoryMB: count,
  diskSizeMB: count,
  metadata: metadataSchema.nullish(),
  envdVersion: z.string(),
  volumeMounts: z.array(volumeMountSchema).nullish(),
}

type ListedWire = z.output<z.ZodObject<typeof listedWire>>

function toListed(wire: ListedWire): ListedSandbox {
  return {
    sandboxId: wire.sandboxID,
    templateId: wire.templateID,
    ...defined({ alias: wire.alias }),
    state: wire.state,
    startedAt: wire.startedAt,
    endAt: wire.endAt,
    cpuCount: wire.cpuCount,
    memoryMiB: wire.memoryMB,
    diskSizeMiB: wire.diskSizeMB,
    metadata: wire.metadata ?? {},
    envdVersion: wire.envdVersion,
    volumeMounts: wire.volumeMounts ?? [],
  }
}

/** E2B's `ListedSandbox[]` (GET /v2/sandboxes). */
export const listedSandboxesSchema = z.array(z.object(listedWire).transform(toListed))

const networkSchema = z.object({
  allowOut: z.array(z.string()).optional(),
  denyOut: z.array(z.string()).optional(),
  allowPublicTraffic: z.boolean().optional(),
  maskRequestHost: z.string().optional(),
})

/** E2B's `SandboxDetail` (GET /sandboxes/{id}). */
export const sandboxDetailSchema = z
  .object({
    ...listedWire,
    envdAccessToken: optionalString,
    domain: optionalString,
    allowInternetAccess: z.boolean().nullish(),
    network: networkSchema.nullish(),
    lifecycle: z
      .object({ autoResume: z.boolean(), onTimeout: z.enum(['kill', 'pause']) })
      .nullish(),
  })
  .transform((wire): SandboxDetail => ({
    ...toListed(wire),
    ...defined({
      envdAccessToken: wire.envdAccessToken,
      domain: wire.domain,
      allowInternetAccess: wire.allowInternetAccess ?? undefined,
      network:
        wire.network === null || wire.network === undefined ? undefined : defined(wire.network),
      lifecycle: wire.lifecycle ?? undefined,
    }),
  }))

/** E2B's `SandboxMetric[]` (GET /sandboxes/{id}/metrics); byte counts get their unit. */
export const sandboxMetricsSchema = z.array(
  z
    .object({
      timestampUnix: z.number(),
      cpuCount: count,
      cpuUsedPct: z.number(),
      memUsed: z.number(),
      memTotal: z.number(),
      memCache: z.number(),
      diskUsed: z.number(),
      diskTotal: z.number(),
    })
    .transform((wire): SandboxMetric => ({
      timestamp: new Date(wire.timestampUnix * 1000),
      cpuCount: wire.cpuCount,
      cpuUsedPct: wire.cpuUsedPct,
      memUsedBytes: wire.memUsed,
      memTotalBytes: wire.memTotal,
      memCacheBytes: wire.memCache,
      diskUsedBytes: wire.diskUsed,
      diskTotalBytes: wire.diskTotal,
    })),
)

/** `X-Total-Running`: a count, or absent. */
export const totalRunningSchema = z.string().regex(/^\d+$/, 'a count').transform(Number).optional()

/** Options of a new sandbox, in domain names. */
export interface CreateSandboxOptions {
  /** Template id or alias. @default 'base' (the server's default template) */
  templateId?: string
  /** Lifetime from now, ms; sent in whole seconds, rounded up. @default the server's (300 s) */
  timeoutMs?: number
  metadata?: Record<string, string>
  /** Environment variables of every process in the sandbox. */
  envVars?: Record<string, string>
  /** Pause instead of kill at the deadline. */
  autoPause?: boolean
  allowInternetAccess?: boolean
  network?: SandboxNetwork
}

/** Whole seconds for a wire `timeout`, rounded up so a deadline is never shortened. */
export function toWireSeconds(timeoutMs: number): number {
  return Math.max(1, Math.ceil(timeoutMs / 1000))
}

/** E2B's `NewSandboxV2` body. */
export function toNewSandboxBody(options: CreateSandboxOptions): Record<string, unknown> {
  return defined({
    templateID: options.templateId ?? 'base',
    timeout: options.timeoutMs === undefined ? undefined : toWireSeconds(options.timeoutMs),
    metadata: options.metadata,
    envVars: options.envVars,
    autoPause: options.autoPause,
    allow_internet_access: options.allowInternetAccess,
    network: options.network,
  })
}
