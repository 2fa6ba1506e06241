/**
 * Settings of the one-shot run engine; the server and the CLI embed this schema (importing it as
 * `@sandcell/runs/config`, without the engine).
 */
import { z } from 'zod'

/** One-shot runs (POST /run, /api/v2/execute, `sandcell run`): concurrency, caps, pools. */
export const runConfigSchema = z.object({
  maxConcurrent: z
    .number()
    .int()
    .positive()
    .default(4)
    .describe('runs at once; more wait in a queue (default 4); SANDCELL_RUN_MAX_CONCURRENT'),
  queueTimeoutMs: z
    .number()
    .int()
    .min(0)
    .default(10_000)
    .describe(
      'how long a run may wait for a slot before 429 + Retry-After, ms (default 10000); SANDCELL_RUN_QUEUE_TIMEOUT_MS',
    ),
  maxQueued: z
    .number()
    .int()
    .min(0)
    .default(64)
    .describe(
      'runs that may wait at once; beyond, 429 at once (default 64); SANDCELL_RUN_MAX_QUEUED',
    ),
  outputMaxChars: z
    .number()
    .int()
    .positive()
    .default(65_536)
    .describe(
      "characters kept per stream and stage; more kills the stage with status OL/EL (default 65536, Piston's); SANDCELL_RUN_OUTPUT_MAX_CHARS",
    ),
  maxFiles: z
    .number()
    .int()
    .positive()
    .default(64)
    .describe('files one run may send (default 64); SANDCELL_RUN_MAX_FILES'),
  maxFilesBytes: z
    .number()
    .int()
    .positive()
    .default(4 * 1024 * 1024)
    .describe(
      "bytes one run's files may hold in all, decoded (default 4 MiB); SANDCELL_RUN_MAX_FILES_BYTES",
    ),
  memoryOverheadMiB: z
    .number()
    .int()
    .min(0)
    .default(48)
    .describe(
      "memory added to a stage's limit for the sandbox's agent, MiB (default 48); SANDCELL_RUN_MEMORY_OVERHEAD_MIB",
    ),
  poolMin: z
    .number()
    .int()
    .min(0)
    .default(1)
    .describe(
      'ready sandboxes kept per template that runs use, without demand (default 1); SANDCELL_RUN_POOL_MIN',
    ),
  poolMax: z
    .number()
    .int()
    .min(0)
    .default(4)
    .describe('most ready sandboxes per template under demand (default 4); SANDCELL_RUN_POOL_MAX'),
})

export type RunConfig = z.output<typeof runConfigSchema>

/** The run settings the engine takes: the config's `run.*`. */
export type RunSettings = RunConfig
