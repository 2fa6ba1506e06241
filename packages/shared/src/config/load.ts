/**
 * One way to load any program's configuration: defaults < YAML file < `SANDCELL_*` environment
 * < command-line flags, validated once by the program's zod schema into a frozen object, or
 * one ConfigError listing every bad path.
 */
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { ConfigError } from '../errors.js'

export interface LoadConfigOptions<S extends z.ZodObject> {
  schema: S
  /** YAML file; missing keys fall back to defaults. */
  file?: string | undefined
  /** Usually process.env, passed in so only main.ts reads it. */
  env?: Record<string, string | undefined>
  /** Values from flags, by config path (`limits.memoryMiB`), already parsed. */
  flags?: Record<string, unknown>
  /** @default 'SANDCELL_' */
  envPrefix?: string
}

/** `limits.memoryMiB` -> `LIMITS_MEMORY_MIB`. */
export function envName(path: readonly string[]): string {
  return path
    .map((part) =>
      part
        // Binary units are one word: memoryMiB -> MEMORY_MIB, not MEMORY_MI_B.
        .replace(/([KMGT])iB/g, '$1ib')
        .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
        .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
        .toUpperCase(),
    )
    .join('_')
}

type Leaf = 'string' | 'number' | 'boolean' | 'array' | 'other'

/** The base type under optional/default/nullable wrappers. */
function unwrap(schema: z.ZodType): z.ZodType {
  let current: z.ZodType = schema
  for (;;) {
    if (
      current instanceof z.ZodDefault ||
      current instanceof z.ZodPrefault ||
      current instanceof z.ZodOptional ||
      current instanceof z.ZodNullable
    ) {
      current = current.unwrap() as z.ZodType
    } else if (current instanceof z.ZodPipe) {
      current = current.in as z.ZodType
    } else {
      return current
    }
  }
}

function leafKind(schema: z.ZodType): Leaf {
  const base = unwrap(schema)
  if (base instanceof z.ZodString || base instanceof z.ZodEnum || base instanceof z.ZodLiteral) {
    return 'string'
  }
  if (base instanceof z.ZodNumber) {
    return 'number'
  }
  if (base instanceof z.ZodBoolean) {
    return 'boolean'
  }
  if (base instanceof z.ZodArray) {
    return 'array'
  }
  return 'other'
}

function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = target
  for (const key of path.slice(0, -1)) {
    const next = node[key]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) {
      node[key] = {}
    }
    node = node[key] as Record<string, unknown>
  }
  node[path[path.length - 1] as string] = value
}

function coerce(kind: Leaf, raw: string): unknown {
  switch (kind) {
    case 'number':
      return raw.trim() === '' ? raw : Number(raw)
    case 'boolean':
      return ['1', 'true', 'yes', 'on'].includes(raw.toLowerCase())
        ? true
        : ['0', 'false', 'no', 'off'].includes(raw.toLowerCase())
          ? false
          : raw
    case 'array':
      return raw
        .split(',')
        .map((item) => item.trim())
        .filter((item) => item.length > 0)
    case 'string':
    case 'other':
      return raw
  }
}

/** Reads `SANDCELL_*` variables for every leaf of the schema. */
function fromEnv(
  schema: z.ZodObject,
  env: Record<string, string | undefined>,
  prefix: string,
  path: string[] = [],
  out: Record<string, unknown> = {},
): Record<string, unknown> {
  for (const [key, field] of Object.entries(schema.shape)) {
    const fieldPath = [...path, key]
    const base = unwrap(field as z.ZodType)
    if (base instanceof z.ZodObject) {
      fromEnv(base, env, prefix, fieldPath, out)
      continue
    }
    const raw = env[`${prefix}${envName(fieldPath)}`]
    if (raw !== undefined) {
      setPath(out, fieldPath, coerce(leafKind(field as z.ZodType), raw))
    }
  }
  return out
}

function merge(
  base: Record<string, unknown>,
  over: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const existing = out[key]
    out[key] =
      typeof value === 'object' &&
      value !== null &&
      !Array.isArray(value) &&
      typeof existing === 'object' &&
      existing !== null &&
      !Array.isArray(existing)
        ? merge(existing as Record<string, unknown>, value as Record<string, unknown>)
        : value
  }
  return out
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) {
      deepFreeze(child)
    }
    Object.freeze(value)
  }
  return value
}

/** @throws ConfigError naming every invalid path, its source and the problem. */
export function loadConfig<S extends z.ZodObject>(
  options: LoadConfigOptions<S>,
): Readonly<z.output<S>> {
  const prefix = options.envPrefix ?? 'SANDCELL_'
  let fileValues: Record<string, unknown> = {}
  if (options.file !== undefined) {
    let text: string
    try {
      text = readFileSync(options.file, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read config file ${options.file}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    const parsed: unknown = parseYaml(text)
    if (
      parsed !== null &&
      parsed !== undefined &&
      (typeof parsed !== 'object' || Array.isArray(parsed))
    ) {
      throw new ConfigError(`config file ${options.file} must hold a mapping at the top level`)
    }
    fileValues = (parsed ?? {}) as Record<string, unknown>
  }
  const flagValues: Record<string, unknown> = {}
  for (const [path, value] of Object.entries(options.flags ?? {})) {
    if (value !== undefined) {
      setPath(flagValues, path.split('.'), value)
    }
  }
  const merged = merge(
    merge(fileValues, fromEnv(options.schema, options.env ?? {}, prefix)),
    flagValues,
  )
  const result = options.schema.safeParse(merged)
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const path = issue.path.map(String)
      return `${path.join('.') || '(root)'} (${prefix}${envName(path)}): ${issue.message}`
    })
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`, {
      details: { problems },
    })
  }
  return deepFreeze(result.data)
}
