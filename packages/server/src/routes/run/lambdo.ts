/**
 * Lambdo's `POST /run` (faast-rt/lambdo): `{ language, version, input, code: [{ filename,
 * content }] }` → `{ status, stdout, stderr }`, where status is the last stage's exit code and
 * stdout/stderr hold every stage's output in order. The language matches any case, the version
 * as a SemVer selector (`3`, `3.11`, `*`). A timeout answers status 128 with `Timeout` on
 * stderr, as Lambdo does; another signal 128 + its number; a capped stream says so on stderr.
 * Also `GET /languages`: every configured language with its availability and the reason.
 */
import type { FastifyInstance } from 'fastify'
import { InvalidArgumentError, assertNever } from '@sandcell/shared'
import { shellExitCode } from '@sandcell/protocol'
import { handleRunApiError } from '../../error-handler.js'
import { describeStageEnd, stageSignal, validateFiles } from '@sandcell/runs'
import type { RunResult, RunService, StageEnd, StageResult } from '@sandcell/runs'

export interface LambdoRoutesOptions {
  runs: RunService
  bodyLimit: number
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** The body, checked field by field with serde's wording (Lambdo deserializes with serde). */
function parseBody(body: unknown): {
  language: string
  version: string
  input: string
  code: { filename: string; content: string }[]
} {
  if (!isRecord(body)) {
    throw new InvalidArgumentError('Json deserialize error: expected a JSON object')
  }
  for (const field of ['language', 'version', 'input'] as const) {
    if (body[field] === undefined) {
      throw new InvalidArgumentError(`Json deserialize error: missing field \`${field}\``)
    }
    if (typeof body[field] !== 'string') {
      throw new InvalidArgumentError(
        `Json deserialize error: invalid type for \`${field}\`, expected a string`,
      )
    }
  }
  if (body.code === undefined) {
    throw new InvalidArgumentError('Json deserialize error: missing field `code`')
  }
  if (!Array.isArray(body.code)) {
    throw new InvalidArgumentError(
      'Json deserialize error: invalid type for `code`, expected a sequence',
    )
  }
  const code = (body.code as unknown[]).map((file, index) => {
    if (!isRecord(file) || typeof file.filename !== 'string' || typeof file.content !== 'string') {
      throw new InvalidArgumentError(
        `Json deserialize error: code[${index}] needs \`filename\` and \`content\` strings`,
      )
    }
    return { filename: file.filename, content: file.content }
  })
  return {
    language: body.language as string,
    version: body.version as string,
    input: body.input as string,
    code,
  }
}

/** Lambdo's status: the exit code; 128 for a timeout, as Lambdo answers; 128 + signal number. */
function stageStatus(end: StageEnd): number {
  if (end.kind === 'timed-out') {
    return 128
  }
  return shellExitCode({
    code: end.kind === 'exited' ? end.code : null,
    signal: stageSignal(end),
  })
}

/** What stderr adds: Lambdo's `Timeout`, or why sandcell ended the stage. */
function stageNote(end: StageEnd): string {
  switch (end.kind) {
    case 'exited':
      return ''
    case 'timed-out':
      return 'Timeout'
    case 'signaled':
    case 'out-of-memory':
    case 'output-limit':
      return `sandcell: ${describeStageEnd(end) ?? ''}`
    default:
      return assertNever(end, 'stage end')
  }
}

/** A run in Lambdo's response shape. */
export function lambdoResult(result: RunResult): {
  status: number
  stdout: string
  stderr: string
} {
  const stages = [result.compile, result.run].filter(
    (stage): stage is StageResult => stage !== undefined,
  )
  const last = stages[stages.length - 1]
  let stderr = stages.map((stage) => stage.stderr).join('')
  const note = last === undefined ? '' : stageNote(last.end)
  if (note !== '') {
    stderr += `${stderr === '' || stderr.endsWith('\n') ? '' : '\n'}${note}`
  }
  return {
    status: last === undefined ? 1 : stageStatus(last.end),
    stdout: stages.map((stage) => stage.stdout).join(''),
    stderr,
  }
}

export function lambdoRoutes(app: FastifyInstance, options: LambdoRoutesOptions): void {
  void app.register((lambdo, _opts, done) => {
    const { runs } = options
    lambdo.setErrorHandler(handleRunApiError)

    lambdo.post('/run', { bodyLimit: options.bodyLimit }, async (request) => {
      const body = parseBody(request.body)
      const language = await runs.catalog.resolve(body.language, body.version)
      const files = validateFiles(
        body.code.map((file) => ({ name: file.filename, content: file.content })),
        {
          mainName: language.config.main,
          maxFiles: runs.settings.maxFiles,
          maxTotalBytes: runs.settings.maxFilesBytes,
          field: { list: 'code', name: 'filename' },
        },
      )
      const result = await runs.execute({
        language,
        files,
        stdin: Buffer.from(body.input, 'utf8'),
      })
      return lambdoResult(result)
    })

    lambdo.get('/languages', async () => {
      const statuses = await runs.catalog.statuses()
      return statuses.map((status) => ({
        language: status.name,
        version: status.version ?? null,
        aliases: status.aliases,
        runtime: status.runtime ?? null,
        template: status.template ?? null,
        compiled: status.compiled,
        available: status.available,
        reason: status.reason ?? null,
      }))
    })
    done()
  })
}
