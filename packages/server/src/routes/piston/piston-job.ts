/**
 * Piston's execute request (POST /api/v2/execute, and the WebSocket's `init`): validated in
 * Piston's order with Piston's messages, into a run of the run service.
 */
import { InvalidArgumentError } from '@sandcell/shared'
import type { ResolvedLanguage } from '@sandcell/runs'
import { validateFiles, type RunFile, type WireFile } from '@sandcell/runs'
import type { RunService } from '@sandcell/runs'

const mib = 1024 * 1024

/** A Piston request, checked and ready to run. */
export interface PistonJob {
  language: ResolvedLanguage
  files: RunFile[]
  stdin: string
  args: string[]
  compile: { timeoutMs: number; memoryMiB: number }
  run: { timeoutMs: number; memoryMiB: number }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * Checks a request body as Piston does (same order, same messages), then sandcell's own checks
 * (file names, sizes, args). `-1` memory limits mean the language's limit, as clients intend.
 * @throws InvalidArgumentError with Piston's message
 */
export async function parsePistonJob(body: unknown, runs: RunService): Promise<PistonJob> {
  const fields = isRecord(body) ? body : {}
  const { language, version, files } = fields
  if (typeof language !== 'string' || language === '') {
    throw new InvalidArgumentError('language is required as a string')
  }
  if (typeof version !== 'string' || version === '') {
    throw new InvalidArgumentError('version is required as a string')
  }
  if (!Array.isArray(files)) {
    throw new InvalidArgumentError('files is required as an array')
  }
  for (const [index, file] of (files as unknown[]).entries()) {
    if (!isRecord(file) || typeof file.content !== 'string') {
      throw new InvalidArgumentError(`files[${index}].content is required as a string`)
    }
  }
  const wireFiles = files as Record<string, unknown>[]
  const resolved = await runs.catalog.resolve(language, version)
  const encodingOf = (file: Record<string, unknown>): string | undefined =>
    typeof file.encoding === 'string' ? file.encoding : undefined
  if (!wireFiles.some((file) => !['base64', 'hex'].includes(encodingOf(file) ?? 'utf8'))) {
    throw new InvalidArgumentError('files must include at least one utf8 encoded file')
  }
  const configured = {
    compile: runs.stageLimits(resolved, 'compile'),
    run: runs.stageLimits(resolved, 'run'),
  }
  const limits = {
    compile: { ...configured.compile },
    run: { ...configured.run },
  }
  for (const constraint of ['memory_limit', 'timeout', 'cpu_time'] as const) {
    for (const stage of ['compile', 'run'] as const) {
      const name = `${stage}_${constraint}`
      const value = fields[name]
      // Piston skips absent, null, 0 and other falsy values.
      if (value === undefined || value === null || value === 0 || value === false || value === '') {
        continue
      }
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        throw new InvalidArgumentError(`If specified, ${name} must be a number`)
      }
      switch (constraint) {
        case 'timeout': {
          const max = configured[stage].timeoutMs
          if (value > max) {
            throw new InvalidArgumentError(`${name} cannot exceed the configured limit of ${max}`)
          }
          if (value < 0) {
            throw new InvalidArgumentError(`${name} must be non-negative`)
          }
          limits[stage].timeoutMs = Math.max(1, Math.ceil(value))
          break
        }
        case 'memory_limit': {
          const max = configured[stage].memoryMiB * mib
          if (value > max) {
            throw new InvalidArgumentError(`${name} cannot exceed the configured limit of ${max}`)
          }
          // -1 asks for no limit: the language's own is the most there is.
          if (value < 0 && value !== -1) {
            throw new InvalidArgumentError(`${name} must be non-negative`)
          }
          if (value > 0) {
            limits[stage].memoryMiB = Math.max(1, Math.ceil(value / mib))
          }
          break
        }
        case 'cpu_time':
          // Not enforced separately: the wall-clock timeout bounds CPU time too.
          if (value < 0) {
            throw new InvalidArgumentError(`${name} must be non-negative`)
          }
          break
      }
    }
  }
  const stdin = fields.stdin ?? ''
  if (typeof stdin !== 'string') {
    throw new InvalidArgumentError('If specified, stdin must be a string')
  }
  const args = fields.args ?? []
  if (!Array.isArray(args) || !args.every((arg) => typeof arg === 'string')) {
    throw new InvalidArgumentError('If specified, args must be an array of strings')
  }
  for (const [index, file] of wireFiles.entries()) {
    if (file.name !== undefined && file.name !== null && typeof file.name !== 'string') {
      throw new InvalidArgumentError(`If specified, files[${index}].name must be a string`)
    }
  }
  const validated = validateFiles(
    wireFiles.map((file): WireFile => ({
      name: typeof file.name === 'string' && file.name !== '' ? file.name : undefined,
      content: file.content as string,
      encoding: encodingOf(file),
    })),
    {
      mainName: resolved.config.main,
      maxFiles: runs.settings.maxFiles,
      maxTotalBytes: runs.settings.maxFilesBytes,
      field: { list: 'files', name: 'name' },
    },
  )
  return {
    language: resolved,
    files: validated,
    stdin,
    args,
    compile: limits.compile,
    run: limits.run,
  }
}

/** Piston adds a final newline to stdin when it has none. */
export function pistonStdin(stdin: string): Buffer {
  return Buffer.from(stdin.endsWith('\n') ? stdin : `${stdin}\n`, 'utf8')
}
