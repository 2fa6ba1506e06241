/**
 * `sandcell run LANG [FILE] [-- ARGS]`: runs one file (or code read from stdin when FILE is `-`
 * or absent) once in a fresh sandbox, through a server's Piston API or `--local` on this
 * machine's runtime. Compile output and failures go to stderr; the exit code is the program's
 * (or the compiler's), 128 + signal when killed, 125 when sandcell itself failed. Both ways see
 * the run as Piston's answer read by the SDK (`ExecuteResult`), which `--json` prints.
 */
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { Command } from 'commander'
import { shellExitCode } from '@sandcell/protocol'
import { parseExecuteResult, type ExecuteResult, type ExecuteStage } from '@sandcell/sdk'
import { errorMessage } from '@sandcell/shared'
import { parsePositive } from '../arguments.js'
import { exitSandcellFailed, listenForInterrupts } from '../command-exit.js'
import type { LocalRuns } from '../local-run.js'
import { withClient, withServerOptions, type CommandContext, type ServerFlags } from '../remote.js'

interface RunFlags extends ServerFlags {
  languageVersion: string
  local?: boolean
  stdin?: string
  timeoutMs?: number
  json?: boolean
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) {
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk))
  }
  return Buffer.concat(chunks)
}

function stageExitCode(stage: ExecuteStage): number {
  return shellExitCode({
    code: stage.code,
    signal: stage.signal === null ? null : (stage.signal as NodeJS.Signals),
  })
}

/** Prints a result the way a terminal user expects it; returns the exit code. */
export function printResult(result: ExecuteResult): number {
  const { compile } = result
  if (compile !== undefined) {
    process.stderr.write(compile.stdout)
    process.stderr.write(compile.stderr)
    if (compile.status !== null) {
      process.stderr.write(
        `sandcell: compilation failed${compile.message === null ? '' : `: ${compile.message}`}\n`,
      )
      return stageExitCode(compile)
    }
  }
  const { run } = result
  process.stdout.write(run.stdout)
  process.stderr.write(run.stderr)
  if (run.status !== null && run.status !== 'RE' && run.message !== null) {
    process.stderr.write(`sandcell: ${run.message}\n`)
  }
  return stageExitCode(run)
}

/** Operands after `--` are the program's arguments, even the first one: FILE is then absent. */
function splitOperands(
  argv: readonly string[],
  language: string,
  file: string | undefined,
  args: string[],
): { file: string | undefined; args: string[] } {
  const languageAt = argv.indexOf(language, argv.indexOf('run'))
  const dashAt = argv.indexOf('--', languageAt)
  const fileAt = file === undefined ? -1 : argv.indexOf(file, languageAt + 1)
  if (file !== undefined && dashAt !== -1 && fileAt > dashAt) {
    return { file: undefined, args: [file, ...args] }
  }
  return { file, args }
}

export function runLanguageCommand(context: CommandContext & { argv: readonly string[] }): Command {
  return withServerOptions(new Command('run'))
    .description(
      'run a file once in a fresh sandbox (code from stdin when FILE is - or absent), through a server or --local',
    )
    .argument('<language>', 'language name or alias (see: sandcell languages)')
    .argument('[file]', 'the program; - or absent reads it from stdin')
    .argument('[args...]', "the program's arguments (after --)")
    .option('--language-version <range>', 'SemVer range of the language version', '*')
    .option('--local', 'run on this machine’s runtime, without a server')
    .option(
      '--stdin <text>',
      "the program's stdin (default: this command's stdin, when FILE names the code and stdin is not a terminal)",
    )
    .option(
      '--timeout-ms <n>',
      'wall-clock limit of the run stage',
      parsePositive('--timeout-ms', true),
    )
    .option(
      '--json',
      'print the whole result as JSON instead: the SDK’s ExecuteResult (Piston’s answer, camelCase), with or without --local',
    )
    .action(
      async (
        language: string,
        fileOperand: string | undefined,
        argsOperand: string[],
        flags: RunFlags,
      ) => {
        const { file, args } = splitOperands(context.argv, language, fileOperand, argsOperand)
        process.exitCode = await runFile(context, language, file, args, flags)
      },
    )
}

async function runFile(
  context: CommandContext,
  language: string,
  file: string | undefined,
  args: string[],
  flags: RunFlags,
): Promise<number> {
  let code: Buffer
  let stdin: Buffer
  try {
    const fromStdin = file === undefined || file === '-'
    code = fromStdin ? await readAll(process.stdin) : readFileSync(file)
    stdin =
      flags.stdin !== undefined
        ? Buffer.from(flags.stdin, 'utf8')
        : !fromStdin && !process.stdin.isTTY
          ? await readAll(process.stdin)
          : Buffer.alloc(0)
  } catch (err) {
    process.stderr.write(`sandcell: ${errorMessage(err)}\n`)
    return exitSandcellFailed
  }
  const name = file === undefined || file === '-' ? undefined : basename(file)
  const wireFile = { ...(name === undefined ? {} : { name }), content: code.toString('utf8') }
  const print = (result: ExecuteResult): number => {
    if (flags.json === true) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
      // A failed compile stage is the run stage too (Piston's answer): its exit code.
      return stageExitCode(result.run)
    }
    return printResult(result)
  }
  if (flags.local !== true) {
    return withClient(context, flags, async (client) =>
      print(
        await client.run.execute({
          language,
          version: flags.languageVersion,
          files: [wireFile],
          stdin: stdin.toString('utf8'),
          args,
          ...(flags.timeoutMs === undefined ? {} : { runTimeoutMs: flags.timeoutMs }),
        }),
      ),
    )
  }
  const interrupts = listenForInterrupts()
  let local: LocalRuns | undefined
  try {
    // Loaded on use: the CLI's other commands start without the runtime.
    const [{ openLocalRuns }, { toPistonResult, validateFiles }] = await Promise.all([
      import('../local-run.js'),
      import('@sandcell/runs'),
    ])
    local = await openLocalRuns(context.config(), context.log(), {
      buildTemplates: true,
      signal: interrupts.signal,
    })
    const { runs } = local
    const resolved = await runs.catalog.resolve(language, flags.languageVersion)
    const files = validateFiles([wireFile], {
      mainName: resolved.config.main,
      maxFiles: runs.settings.maxFiles,
      maxTotalBytes: runs.settings.maxFilesBytes,
      field: { list: 'files', name: 'name' },
    })
    const result = await runs.execute({
      language: resolved,
      files,
      // As through a server's Piston API: a final newline is added when there is none.
      stdin: stdin.at(-1) === 0x0a ? stdin : Buffer.concat([stdin, Buffer.from('\n')]),
      args,
      ...(flags.timeoutMs === undefined ? {} : { run: { timeoutMs: flags.timeoutMs } }),
      signal: interrupts.signal,
    })
    return print(parseExecuteResult(toPistonResult(result)))
  } catch (err) {
    const reason = (err as { details?: { reason?: unknown } }).details?.reason
    process.stderr.write(
      `sandcell: ${errorMessage(err)}${typeof reason === 'string' ? ` (${reason})` : ''}\n`,
    )
    return exitSandcellFailed
  } finally {
    interrupts.dispose()
    await local?.close()
  }
}
