/**
 * The real `sandcell` CLI (from source) as a child process run to its end, as a person or a
 * script would run it; optionally on a terminal of its own (util-linux `script`).
 */
import { spawn } from 'node:child_process'

const cli = new URL('../../../packages/cli/src/cli.ts', import.meta.url).pathname

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

export interface RunCliOptions {
  /** More environment over this process's (`SANDCELL_SERVER_URL`, `SANDCELL_API_KEY`…). */
  env?: Record<string, string>
  /** Written to its stdin, which is then closed. @default '' */
  stdin?: string
  /** SIGKILL after this long, ms. @default 60000 */
  timeoutMs?: number
  /**
   * Run it on a pseudo-terminal (stdin, stdout and stderr all on it): `stdout` then holds
   * everything it wrote, terminal escapes and `\r\n` included, and `stderr` nothing.
   */
  tty?: boolean
}

/** Runs `sandcell ARGS…` and resolves with its exit code and output once it has exited. */
export function runCli(args: readonly string[], options: RunCliOptions = {}): Promise<CliResult> {
  const argv = [process.execPath, '--conditions=sandcell-source', '--import', 'tsx', cli, ...args]
  const [command, ...commandArgs] =
    options.tty === true
      ? [
          'script',
          '-qec',
          argv.map((arg) => `'${arg.replaceAll("'", `'\\''`)}'`).join(' '),
          '/dev/null',
        ]
      : argv
  return new Promise((resolve, reject) => {
    const child = spawn(command as string, commandArgs, {
      // Loading extra CA certificates costs ~50 ms per Node start.
      env: { ...process.env, NODE_EXTRA_CA_CERTS: '', ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
    child.stdin.end(options.stdin ?? '')
  })
}
