/**
 * One-shot runs through a sandcell server: Piston's `POST /api/v2/execute` and
 * `GET /api/v2/runtimes`, and sandcell's `GET /languages` (every configured language, with the
 * reason when one cannot run). Field names are Piston's on the wire and camelCase here.
 */
import { z } from 'zod'
import type { HttpClient } from './http.js'
import type { CallOptions } from './sandboxes.js'

export interface ExecuteFile {
  /** Relative path in the run directory; the first file is the main one. */
  name?: string
  content: string
  /** @default 'utf8' */
  encoding?: 'utf8' | 'base64' | 'hex'
}

export interface ExecuteOptions extends CallOptions {
  /** Name or alias, any case. */
  language: string
  /** SemVer selector. @default '*' */
  version?: string
  files: ExecuteFile[]
  /** Piston adds a final newline when there is none. */
  stdin?: string
  args?: string[]
  compileTimeoutMs?: number
  runTimeoutMs?: number
  compileMemoryBytes?: number
  runMemoryBytes?: number
}

const stageSchema = z
  .object({
    stdout: z.string(),
    stderr: z.string(),
    output: z.string(),
    code: z.number().nullable(),
    signal: z.string().nullable(),
    message: z.string().nullable().optional(),
    status: z.string().nullable().optional(),
    cpu_time: z.number().nullable().optional(),
    wall_time: z.number().nullable().optional(),
    memory: z.number().nullable().optional(),
  })
  .transform((stage) => ({
    stdout: stage.stdout,
    stderr: stage.stderr,
    output: stage.output,
    code: stage.code,
    signal: stage.signal,
    /** Piston's two-letter status (RE, SG, TO, OL, EL, XX), null on success. */
    status: stage.status ?? null,
    message: stage.message ?? null,
    cpuTimeMs: stage.cpu_time ?? null,
    wallTimeMs: stage.wall_time ?? null,
    memoryBytes: stage.memory ?? null,
  }))

export type ExecuteStage = z.output<typeof stageSchema>

const executeResultSchema = z.object({
  language: z.string(),
  version: z.string(),
  compile: stageSchema.optional(),
  run: stageSchema,
})

export type ExecuteResult = z.output<typeof executeResultSchema>

/**
 * Reads a Piston execute answer (as `POST /api/v2/execute` gives it) into an ExecuteResult.
 * @throws ZodError when `body` has not that shape
 */
export function parseExecuteResult(body: unknown): ExecuteResult {
  return executeResultSchema.parse(body)
}

const runtimesSchema = z.array(
  z.object({
    language: z.string(),
    version: z.string(),
    aliases: z.array(z.string()),
    runtime: z.string().optional(),
  }),
)

export type Runtime = z.output<typeof runtimesSchema>[number]

const languagesSchema = z.array(
  z.object({
    language: z.string(),
    version: z.string().nullable(),
    aliases: z.array(z.string()),
    runtime: z.string().nullable(),
    template: z.string().nullable(),
    compiled: z.boolean(),
    available: z.boolean(),
    reason: z.string().nullable(),
  }),
)

export type LanguageInfo = z.output<typeof languagesSchema>[number]

export interface RunApi {
  /**
   * Runs files once in a fresh sandbox.
   * @throws InvalidArgumentError (unknown runtime, bad files or limits), ResourceExhaustedError
   *   (429: the server's run slots stayed busy)
   */
  execute(options: ExecuteOptions): Promise<ExecuteResult>
  /** The languages that can run, as Piston lists them. */
  runtimes(options?: CallOptions): Promise<Runtime[]>
  /** Every configured language, available or not (with the reason). */
  languages(options?: CallOptions): Promise<LanguageInfo[]>
}

export function createRunApi(http: HttpClient): RunApi {
  return {
    async execute(options) {
      const { body } = await http.requestJson(
        {
          method: 'POST',
          path: '/api/v2/execute',
          json: {
            language: options.language,
            version: options.version ?? '*',
            files: options.files,
            ...(options.stdin === undefined ? {} : { stdin: options.stdin }),
            ...(options.args === undefined ? {} : { args: options.args }),
            ...(options.compileTimeoutMs === undefined
              ? {}
              : { compile_timeout: options.compileTimeoutMs }),
            ...(options.runTimeoutMs === undefined ? {} : { run_timeout: options.runTimeoutMs }),
            ...(options.compileMemoryBytes === undefined
              ? {}
              : { compile_memory_limit: options.compileMemoryBytes }),
            ...(options.runMemoryBytes === undefined
              ? {}
              : { run_memory_limit: options.runMemoryBytes }),
          },
          signal: options.signal,
        },
        executeResultSchema,
      )
      return body
    },
    async runtimes(options = {}) {
      const { body } = await http.requestJson(
        { method: 'GET', path: '/api/v2/runtimes', signal: options.signal },
        runtimesSchema,
      )
      return body
    },
    async languages(options = {}) {
      const { body } = await http.requestJson(
        { method: 'GET', path: '/languages', signal: options.signal },
        languagesSchema,
      )
      return body
    },
  }
}
