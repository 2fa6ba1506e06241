/**
 * The languages one-shot runs support, from a YAML file in the spirit of LambdoConfig's
 * `languages`: name, version, aliases, templates, main file, optional compile step, run step,
 * limits. Loaded once and validated with zod into one error listing every bad path; commands
 * are argv lists whose `{{placeholders}}` are expanded per run (never through a shell).
 */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import semver from 'semver'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { ConfigError } from '@sandcell/shared'

/** The languages file that ships with sandcell (Python, JavaScript, Bash, C, C++). */
export const defaultLanguagesFile = fileURLToPath(new URL('../languages.yaml', import.meta.url))

/** Placeholders that stand for one value and may appear inside an argument. */
const scalarPlaceholders = ['main', 'filename', 'dir', 'stdin', 'version'] as const
/** Placeholders that stand for zero or more arguments and must be a whole argument. */
const listPlaceholders = ['files', 'args'] as const
type ScalarPlaceholder = (typeof scalarPlaceholders)[number]
type ListPlaceholder = (typeof listPlaceholders)[number]

const placeholderPattern = /\{\{\s*([a-z]+)\s*\}\}/g

/** A command as YAML gives it: an argv list, or a string split on whitespace (no shell). */
const commandSchema = z
  .union([z.string().min(1), z.array(z.string()).min(1)])
  .transform((value) => (typeof value === 'string' ? value.trim().split(/\s+/) : value))
  .superRefine((argv, ctx) => {
    for (const [index, arg] of argv.entries()) {
      for (const match of arg.matchAll(placeholderPattern)) {
        const name = match[1] ?? ''
        if ((listPlaceholders as readonly string[]).includes(name)) {
          if (arg.trim() !== match[0]) {
            ctx.addIssue({
              code: 'custom',
              path: [index],
              message: `{{${name}}} stands for several arguments and must be a whole argument, not part of ${JSON.stringify(arg)}`,
            })
          }
        } else if (!(scalarPlaceholders as readonly string[]).includes(name)) {
          ctx.addIssue({
            code: 'custom',
            path: [index],
            message: `unknown placeholder {{${name}}}; known: ${[...scalarPlaceholders, ...listPlaceholders].map((p) => `{{${p}}}`).join(', ')}`,
          })
        }
      }
    }
    if (argv[0] === undefined || argv[0].includes('{{')) {
      ctx.addIssue({
        code: 'custom',
        path: [0],
        message: 'the program itself cannot be a placeholder',
      })
    }
  })

const stageLimitsShape = {
  timeoutMs: z
    .number()
    .int()
    .positive()
    .optional()
    .describe('wall-clock limit, ms: the default and the most a request may ask'),
  memoryMiB: z
    .number()
    .int()
    .positive()
    .optional()
    .describe("memory of the stage's processes, MiB: the default and the most a request may ask"),
}

const stageSchema = z.strictObject({
  command: commandSchema,
  ...stageLimitsShape,
})

const stageDefaultsSchema = z.strictObject(stageLimitsShape)

const languageSchema = z.strictObject({
  name: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9+#._-]*$/, 'a name of letters, digits and + # . _ -'),
  aliases: z.array(z.string().min(1)).default([]),
  /** Piston's `runtime`, for a language several runtimes serve. */
  runtime: z.string().min(1).optional(),
  version: z
    .string()
    .refine((v) => semver.coerce(v) !== null, 'a version such as 3.11.2')
    .optional(),
  /** Prints the version (found as the first x.y[.z] in its output) when `version` is not set. */
  versionCommand: commandSchema.optional(),
  /** Templates to run on, in order of preference: the first where the toolchain is found wins. */
  template: z
    .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
    .transform((value) => (Array.isArray(value) ? value : [value])),
  /** Commands that must exist in the template; default: the programs of compile and run. */
  requires: z.array(z.string().min(1)).optional(),
  /** Name of the main file when a request gives none. */
  main: z
    .string()
    .regex(/^[A-Za-z0-9._-]+$/, 'a plain file name')
    .refine((v) => v !== '.' && v !== '..', 'a plain file name'),
  compile: stageSchema.optional(),
  run: stageSchema,
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
  /** Processes and threads the program may have at once. */
  processes: z.number().int().positive().optional(),
  /**
   * Whether runs reach the internet (`true`: the sandbox's default egress, DNS included);
   * default off: a one-shot run has loopback only.
   */
  network: z.boolean().optional(),
})

const languagesFileSchema = z
  .strictObject({
    apiVersion: z.literal('sandcell/v1', { error: 'must be sandcell/v1' }),
    kind: z.literal('Languages', { error: 'must be Languages' }),
    defaults: z
      .strictObject({
        compile: stageDefaultsSchema.prefault({}),
        run: stageDefaultsSchema.prefault({}),
        processes: z.number().int().positive().optional(),
        network: z.boolean().optional(),
      })
      .prefault({}),
    languages: z.array(languageSchema).min(1, 'at least one language'),
  })
  .superRefine((file, ctx) => {
    const seen = new Map<string, number>()
    for (const [index, language] of file.languages.entries()) {
      if (language.version === undefined && language.versionCommand === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['languages', index, 'version'],
          message: 'give a version or a versionCommand',
        })
      }
      for (const name of [language.name, ...language.aliases]) {
        const key = name.toLowerCase()
        const other = seen.get(key)
        if (other !== undefined && other !== index) {
          ctx.addIssue({
            code: 'custom',
            path: ['languages', index, 'aliases'],
            message: `${JSON.stringify(name)} already names languages[${other}]`,
          })
        }
        seen.set(key, index)
      }
    }
  })

export type LanguagesFile = z.output<typeof languagesFileSchema>

/** The limits of one stage, defaults applied. */
export interface StageLimits {
  timeoutMs: number
  memoryMiB: number
}

export interface StageConfig extends StageLimits {
  argv: readonly string[]
}

/** One language, validated, with every default applied. */
export interface LanguageConfig {
  name: string
  aliases: readonly string[]
  runtime: string | undefined
  /** The configured version, when the file names one (else it is probed). */
  version: string | undefined
  versionCommand: readonly string[] | undefined
  templates: readonly string[]
  requires: readonly string[]
  main: string
  compile: StageConfig | undefined
  run: StageConfig
  /** Limits of both stages, also for a language without a compile step (Piston checks both). */
  limits: { compile: StageLimits; run: StageLimits }
  env: Readonly<Record<string, string>>
  processes: number
  /** Whether runs get a network of their own (otherwise loopback only). */
  network: boolean
}

/** Limits when neither the language nor the file's `defaults` give one (Piston's own). */
export const builtinLimits = {
  compile: { timeoutMs: 10_000, memoryMiB: 512 },
  run: { timeoutMs: 3_000, memoryMiB: 256 },
  processes: 64,
} as const

function describeIssues(error: z.ZodError): string[] {
  return error.issues.map(
    (issue) => `${issue.path.map(String).join('.') || '(root)'}: ${issue.message}`,
  )
}

/**
 * Validates a parsed languages document.
 * @param source names the document in errors (a path)
 * @throws ConfigError listing every bad path
 */
export function parseLanguages(document: unknown, source: string): LanguageConfig[] {
  const result = languagesFileSchema.safeParse(document)
  if (!result.success) {
    const problems = describeIssues(result.error)
    throw new ConfigError(`invalid languages file ${source}: ${problems.join('; ')}`, {
      details: { problems },
    })
  }
  const { defaults, languages } = result.data
  return languages.map((language) => {
    const limitsOf = (
      given: Partial<StageLimits> | undefined,
      kind: 'compile' | 'run',
    ): StageLimits => ({
      timeoutMs: given?.timeoutMs ?? defaults[kind].timeoutMs ?? builtinLimits[kind].timeoutMs,
      memoryMiB: given?.memoryMiB ?? defaults[kind].memoryMiB ?? builtinLimits[kind].memoryMiB,
    })
    const stage = (given: z.output<typeof stageSchema>, kind: 'compile' | 'run'): StageConfig => ({
      argv: given.command,
      ...limitsOf(given, kind),
    })
    const compile = language.compile === undefined ? undefined : stage(language.compile, 'compile')
    const run = stage(language.run, 'run')
    // A program the compile step makes (`./a.out`) cannot be looked for in the template.
    const programs = [compile?.argv[0], run.argv[0]].filter(
      (program): program is string =>
        program !== undefined && (program.startsWith('/') || !program.includes('/')),
    )
    return {
      name: language.name,
      aliases: language.aliases,
      runtime: language.runtime,
      version: language.version === undefined ? undefined : normalizeVersion(language.version),
      versionCommand: language.versionCommand,
      templates: language.template,
      requires: language.requires ?? [...new Set(programs)],
      main: language.main,
      compile,
      run,
      limits: { compile: compile ?? limitsOf(undefined, 'compile'), run },
      env: language.env,
      processes: language.processes ?? defaults.processes ?? builtinLimits.processes,
      network: language.network ?? defaults.network ?? false,
    }
  })
}

/**
 * Reads and validates a languages file.
 * @throws ConfigError when the file cannot be read, is not YAML, or lists bad values
 */
export function loadLanguages(path: string): LanguageConfig[] {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read languages file ${path}: ${(err as Error).message}`, {
      cause: err,
    })
  }
  let document: unknown
  try {
    document = parseYaml(text)
  } catch (err) {
    throw new ConfigError(`languages file ${path} is not valid YAML: ${(err as Error).message}`, {
      cause: err,
    })
  }
  return parseLanguages(document, path)
}

/** `3.11` -> `3.11.0`; a version as a tool prints it -> the first x.y[.z] in it. */
export function normalizeVersion(text: string): string | undefined {
  return semver.coerce(text)?.version
}

/** What the placeholders of one run stand for. */
export interface PlaceholderValues {
  /** The main file's name (relative to `dir`). */
  main: string
  /** Names of the source files (relative to `dir`), main first. */
  files: readonly string[]
  args: readonly string[]
  /** The working directory of the run. */
  dir: string
  /** Path of a file holding the run's stdin. */
  stdin: string
  version: string
}

/**
 * Expands a command's placeholders: `{{files}}` and `{{args}}` become that many arguments,
 * `{{main}}` (or Lambdo's `{{filename}}`), `{{dir}}`, `{{stdin}}` and `{{version}}` are
 * replaced inside arguments. Values are never interpreted by a shell.
 */
export function expandCommand(argv: readonly string[], values: PlaceholderValues): string[] {
  const scalar: Record<ScalarPlaceholder, string> = {
    main: values.main,
    filename: values.main,
    dir: values.dir,
    stdin: values.stdin,
    version: values.version,
  }
  const list: Record<ListPlaceholder, readonly string[]> = {
    files: values.files,
    args: values.args,
  }
  return argv.flatMap((arg) => {
    const whole = /^\{\{\s*([a-z]+)\s*\}\}$/.exec(arg)?.[1]
    if (whole !== undefined && Object.hasOwn(list, whole)) {
      return [...list[whole as ListPlaceholder]]
    }
    return [
      arg.replace(placeholderPattern, (match, name: string) =>
        Object.hasOwn(scalar, name) ? scalar[name as ScalarPlaceholder] : match,
      ),
    ]
  })
}

/** Whether a command uses a placeholder (so the run writes what it needs, e.g. a stdin file). */
export function usesPlaceholder(argv: readonly string[], name: string): boolean {
  return argv.some((arg) =>
    [...arg.matchAll(placeholderPattern)].some((match) => match[1] === name),
  )
}
