/**
 * `sandcell serve` as a real child process for end-to-end tests: started on port 0 over a data
 * dir, its URL read from its stdout, stopped with SIGTERM (SIGKILL past a deadline) and started
 * again over the same data dir, as an operator would.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { testTemplatesDir } from './drivers.js'

const cli = new URL('../../../packages/cli/src/cli.ts', import.meta.url).pathname

/** The cgroup every sandbox of this test process goes under (a leak-check scope too). */
export const testCgroupParent = `sandcell-test-${process.pid}`

/** The API key every test server accepts (32 characters, as a real key would be). */
export const testApiKey = 'sc_test_0123456789abcdefghijklmn'

export interface StartServeOptions {
  /** The server's data dir: its SQLite store, sandboxes and snapshots. */
  dataDir: string
  /** More environment for the server (`SANDCELL_*`), over the test defaults. */
  env?: Record<string, string>
  /** A YAML config file (`--config`). */
  configFile?: string
  /** Destroy every sandbox when the server stops (`--kill-sandboxes-on-exit`). */
  killSandboxesOnExit?: boolean
  /**
   * A command line the server runs under, e.g. a network lab's `hostSpawnPrefix` (nsenter into
   * its host namespace).
   */
  spawnPrefix?: readonly string[]
  /** The address to listen on (`--host`). @default 127.0.0.1 */
  host?: string
  /** How long the server may take to print its URL and answer /health, ms. @default 30000 */
  startTimeoutMs?: number
  /**
   * Resolve only once GET /health answers, not as soon as the URL is printed: by then the
   * process is back in its event loop with its signal handlers installed.
   * @default true
   */
  waitForHealth?: boolean
}

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface ServeProcess {
  /** Base URL for the API and the envd proxy alike, e.g. `http://127.0.0.1:40123`. */
  url: string
  /** The key the server accepts ({@link testApiKey}). */
  apiKey: string
  /**
   * The e2b SDK's own settings for this server (`apiUrl`/`E2B_API_URL`,
   * `sandboxUrl`/`E2B_SANDBOX_URL`, `apiKey`/`E2B_API_KEY`): pass them as options to any SDK call.
   */
  connection: { apiUrl: string; sandboxUrl: string; apiKey: string }
  pid: number
  /** Resolves when the process has exited. */
  exited: Promise<ExitStatus>
  /** Everything the process wrote to stdout and stderr so far (for failure messages). */
  output(): string
  /**
   * Sends SIGTERM and waits for the exit; SIGKILL after `timeoutMs`. Safe to call twice.
   * @returns how the process ended, and whether SIGKILL was needed
   */
  stop(options?: { timeoutMs?: number }): Promise<ExitStatus & { killed: boolean }>
}

/**
 * Starts `sandcell serve --port 0 --data-dir DIR` and resolves with its URL once it prints
 * `sandcell listening on URL` and answers GET /health.
 * @throws Error with the process's output when it exits or stays silent past the deadline
 */
export async function startServeProcess(options: StartServeOptions): Promise<ServeProcess> {
  const args = [
    '--conditions=sandcell-source',
    '--import',
    'tsx',
    cli,
    'serve',
    '--port',
    '0',
    '--data-dir',
    options.dataDir,
    ...(options.host === undefined ? [] : ['--host', options.host]),
    ...(options.configFile === undefined ? [] : ['--config', options.configFile]),
    ...(options.killSandboxesOnExit === true ? ['--kill-sandboxes-on-exit'] : []),
  ]
  const [command, ...prefixArgs] = [...(options.spawnPrefix ?? []), process.execPath, ...args]
  const child: ChildProcess = spawn(command as string, prefixArgs, {
    env: {
      ...process.env,
      SANDCELL_API_KEYS: testApiKey,
      SANDCELL_TEMPLATES_DIR: testTemplatesDir,
      SANDCELL_CGROUP_PARENT: testCgroupParent,
      SANDCELL_LOG_LEVEL: 'warn',
      // Loading extra CA certificates costs ~50 ms per Node start.
      NODE_EXTRA_CA_CERTS: '',
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8')
      const match = /sandcell listening on (\S+)/.exec(output)
      if (match?.[1] !== undefined) {
        clearTimeout(timer)
        resolve(match[1])
      }
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8')
    })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`sandcell serve did not start in time:\n${output}`))
    }, options.startTimeoutMs ?? 30_000)
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`sandcell serve exited (${signal ?? code}) before listening:\n${output}`))
    })
  })
  if (options.waitForHealth ?? true) {
    const deadline = Date.now() + (options.startTimeoutMs ?? 30_000)
    for (;;) {
      const status = await fetch(`${url}/health`).then(
        (response) => response.status,
        () => 0,
      )
      if (status === 200) {
        break
      }
      if (Date.now() > deadline || child.exitCode !== null || child.signalCode !== null) {
        child.kill('SIGKILL')
        throw new Error(`sandcell serve never answered /health (last ${status}):\n${output}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
  let stopping: Promise<ExitStatus & { killed: boolean }> | undefined
  return {
    url,
    apiKey: testApiKey,
    connection: { apiUrl: url, sandboxUrl: url, apiKey: testApiKey },
    pid: child.pid ?? 0,
    exited,
    output: () => output,
    stop({ timeoutMs = 20_000 } = {}) {
      stopping ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          return { ...(await exited), killed: false }
        }
        child.kill('SIGTERM')
        let killed = false
        const timer = setTimeout(() => {
          killed = true
          child.kill('SIGKILL')
        }, timeoutMs)
        const status = await exited
        clearTimeout(timer)
        return { ...status, killed }
      })()
      return stopping
    },
  }
}
