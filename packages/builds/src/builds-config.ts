/** Settings of template builds (the server's `builds` section). */
import * as z from 'zod'

export const buildsConfigSchema = z.object({
  concurrency: z
    .number()
    .int()
    .min(1)
    .max(64)
    .default(1)
    .describe(
      'template builds run at once; more wait their turn (default 1); SANDCELL_BUILDS_CONCURRENCY',
    ),
  stepTimeoutMs: z
    .number()
    .int()
    .positive()
    .default(30 * 60_000)
    .describe(
      'longest a RUN step may take before the build fails, ms (default 30 min); SANDCELL_BUILDS_STEP_TIMEOUT_MS',
    ),
  readyTimeoutMs: z
    .number()
    .int()
    .positive()
    .default(10 * 60_000)
    .describe(
      "longest a template's ready command may keep failing, ms (default 10 min, as E2B); SANDCELL_BUILDS_READY_TIMEOUT_MS",
    ),
  maxUploadMiB: z
    .number()
    .int()
    .positive()
    .default(4096)
    .describe('largest COPY upload accepted, MiB (default 4096); SANDCELL_BUILDS_MAX_UPLOAD_MIB'),
  memoryMiB: z
    .number()
    .int()
    .min(64)
    .default(2048)
    .describe(
      'memory of a build sandbox when the request names none, MiB (default 2048); SANDCELL_BUILDS_MEMORY_MIB',
    ),
  cpus: z
    .number()
    .positive()
    .default(2)
    .describe(
      'CPUs of a build sandbox when the request names none (default 2); SANDCELL_BUILDS_CPUS',
    ),
  diskMiB: z
    .number()
    .int()
    .min(64)
    .default(8192)
    .describe('writable disk of a build sandbox, MiB: the most one step may add (default 8192)'),
})

export type BuildsConfig = z.infer<typeof buildsConfigSchema>
