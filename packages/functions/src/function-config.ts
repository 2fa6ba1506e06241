/**
 * A function's `ol.yaml`, accepted as OpenLambda reads it (HTTP methods, cron triggers,
 * environment, entry-point overrides; unknown keys kept and ignored) plus the per-function
 * limits OpenLambda's users ask for (memory, CPU, timeout, processes).
 */
import { InvalidArgumentError } from '@sandcell/shared'
import { parse as parseYaml } from 'yaml'
import * as z from 'zod'

const httpMethods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const

/** Five-field cron (minute hour day month weekday): numbers, `*`, ranges, lists and steps. */
const cronField = /^(\*|\d+(-\d+)?)(\/\d+)?(,(\*|\d+(-\d+)?)(\/\d+)?)*$/

const cronSchema = z
  .string()
  .trim()
  .refine((text) => {
    const fields = text.split(/\s+/)
    return fields.length === 5 && fields.every((field) => cronField.test(field))
  }, 'a five-field cron schedule such as "*/5 * * * *"')

const limitsSchema = z
  .looseObject({
    /** MiB; OpenLambda's name is mem_mb. */
    memory_mb: z.number().int().min(32).max(65536).optional(),
    /** Percent of one core (100 = one core). */
    cpu_percent: z.number().int().min(1).max(6400).optional(),
    timeout_ms: z.number().int().min(1).max(3_600_000).optional(),
    /** Processes and threads at once. */
    procs: z.number().int().min(1).max(32768).optional(),
  })
  .optional()

export const functionConfigSchema = z.looseObject({
  triggers: z
    .looseObject({
      http: z
        .array(
          z.looseObject({
            method: z
              .string()
              .transform((method) => method.toUpperCase())
              .pipe(z.enum([...httpMethods, '*'])),
          }),
        )
        .optional(),
      cron: z
        .array(z.looseObject({ schedule: cronSchema }))
        .max(32)
        .optional(),
      kafka: z.array(z.unknown()).optional(),
    })
    .optional(),
  environment: z
    .record(
      z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name'),
      z.coerce.string(),
    )
    .optional(),
  'reuse-sandbox': z.boolean().optional(),
  limits: limitsSchema,
})

export type FunctionConfig = z.infer<typeof functionConfigSchema>

/** Bytes of `ol.yaml` read at most. */
export const maxConfigBytes = 64 * 1024

/**
 * Parses an `ol.yaml` (an empty or absent one is `{}`).
 * @throws InvalidArgumentError listing every bad field
 */
export function parseFunctionConfig(text: string | undefined): FunctionConfig {
  if (text === undefined || text.trim() === '') {
    return {}
  }
  if (Buffer.byteLength(text) > maxConfigBytes) {
    throw new InvalidArgumentError(`ol.yaml is larger than ${maxConfigBytes / 1024} KiB`)
  }
  let raw: unknown
  try {
    raw = parseYaml(text, { maxAliasCount: 100 }) as unknown
  } catch (err) {
    throw new InvalidArgumentError(`ol.yaml is not YAML: ${(err as Error).message}`)
  }
  const parsed = functionConfigSchema.safeParse(raw ?? {})
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (issue) => `${issue.path.map(String).join('.') || '(root)'}: ${issue.message}`,
    )
    throw new InvalidArgumentError(`ol.yaml is invalid: ${problems.join('; ')}`)
  }
  return parsed.data
}

/** The HTTP methods a function accepts (default: all, as OpenLambda). */
export function allowedMethods(config: FunctionConfig): readonly string[] | 'any' {
  const http = config.triggers?.http
  if (http === undefined || http.length === 0 || http.some((trigger) => trigger.method === '*')) {
    return 'any'
  }
  return [...new Set(http.map((trigger) => trigger.method))]
}
