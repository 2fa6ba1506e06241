/**
 * Starts the built agent bundle (bundle/agent.mjs) as a child process over a temp root with a
 * minimal /etc/passwd, and hands out Connect clients and HTTP helpers for it. Every process the
 * agent starts inherits a per-agent marker env var (set via /init), so teardown can prove that no
 * process outlived the agent.
 */
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import type { TestContext } from 'node:test'
import type { DescService } from '@bufbuild/protobuf'
import { createClient, type Client, type Interceptor, type Transport } from '@connectrpc/connect'
import { createConnectTransport, createGrpcWebTransport } from '@connectrpc/connect-node'

/** The agent bundle under test (scripts/test.mjs builds it first). */
export const agentBundle = new URL('../../bundle/agent.mjs', import.meta.url).pathname

/** uid/gid of `user` in the test root's passwd. */
export const testUserId = 1000

export interface StartAgentOptions {
  /** Extra command-line flags. */
  args?: string[]
  /** Require this access token from the start (via --access-token-file). */
  accessToken?: string
  /** Skip the /init that sets the leak marker (for tests of an un-initialised agent). */
  skipInit?: boolean
  /** Run this agent.mjs instead of the built one (a relocated copy). */
  bundle?: string
}

export interface ClientOptions {
  /** Sandbox user sent as Basic auth; none = the agent's default. */
  user?: string
  /** Defaults to the agent's access token, if it has one. */
  accessToken?: string
  protocol?: 'connect' | 'grpc-web'
  binary?: boolean
  /** Over TCP instead of the Unix socket. */
  tcp?: boolean
  headers?: Record<string, string>
}

export interface HttpResult {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  json<T = unknown>(): T
  text(): string
}

export interface TestAgent {
  /** Host path of the sandbox root. */
  root: string
  socketPath: string
  port: number
  pid: number
  /** Env var every process of this agent carries: name=value. */
  marker: { name: string; value: string }
  /** The access token the agent requires now (tests update it when they rotate it). */
  accessToken: string | undefined
  /** Everything the agent logged so far. */
  logs(): string
  client<S extends DescService>(service: S, options?: ClientOptions): Client<S>
  /** A plain HTTP request over the Unix socket (or TCP). */
  http(
    method: string,
    path: string,
    options?: {
      /** An array value is sent as that many header lines. */
      headers?: Record<string, string | string[]>
      body?: Buffer | string | Readable
      tcp?: boolean
    },
  ): Promise<HttpResult>
  /** Host path of a sandbox path. */
  host(sandboxPath: string): string
  /** Stops the agent (SIGTERM), waits for its exit and returns the exit code. */
  stop(): Promise<number | null>
  /** Kills the agent hard (dispose then does not expect exit code 0). */
  kill(): Promise<void>
  exited: Promise<number | null>
  /**
   * Stops the agent if needed, asserts it exited cleanly and that none of its processes survived,
   * and removes the temp root. For `after`/`t.after`.
   */
  dispose(): Promise<void>
}

const passwd = [
  'root:x:0:0:root:/root:/bin/bash',
  `user:x:${testUserId}:${testUserId}::/home/user:/bin/bash`,
  'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
  '',
].join('\n')
const group = ['root:x:0:', `user:x:${testUserId}:`, 'nogroup:x:65534:', ''].join('\n')

/** A temp sandbox root: /etc/passwd+group, /root (0700), /home/user (owned by user), /tmp (1777). */
export function createTestRoot(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-agent-test-'))
  // mkdtemp makes it 0700; sandbox users must be able to walk through it to their files.
  chmodSync(dir, 0o755)
  const root = join(dir, 'root')
  mkdirSync(join(root, 'etc'), { recursive: true })
  writeFileSync(join(root, 'etc/passwd'), passwd)
  writeFileSync(join(root, 'etc/group'), group)
  mkdirSync(join(root, 'root'), { mode: 0o700 })
  mkdirSync(join(root, 'home/user'), { recursive: true, mode: 0o755 })
  chownSync(join(root, 'home/user'), testUserId, testUserId)
  mkdirSync(join(root, 'tmp'))
  chmodSync(join(root, 'tmp'), 0o1777)
  return root
}

/** Basic auth header value for a sandbox user, as the e2b SDK sends it. */
export function basicAuth(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`
}

/** Starts an agent for one test; `t.after` disposes of it (see TestAgent.dispose). */
export async function startAgentFor(
  t: TestContext,
  options: StartAgentOptions = {},
): Promise<TestAgent> {
  const agent = await startAgent(options)
  t.after(() => agent.dispose())
  return agent
}

/** Starts an agent; the caller registers `dispose()` in an `after` hook. */
export async function startAgent(options: StartAgentOptions = {}): Promise<TestAgent> {
  const root = createTestRoot()
  const dir = join(root, '..')
  const socketPath = join(dir, 'agent.sock')
  const args = [
    options.bundle ?? agentBundle,
    '--listen',
    `unix:${socketPath}`,
    '--listen',
    'tcp:127.0.0.1:0',
    '--root',
    root,
  ]
  args.push('--ready-fd', '3', '--log-level', 'debug')
  if (options.accessToken !== undefined) {
    const tokenFile = join(dir, 'token')
    writeFileSync(tokenFile, `${options.accessToken}\n`, { mode: 0o600 })
    args.push('--access-token-file', tokenFile)
  }
  args.push(...(options.args ?? []))
  const env = { ...process.env }
  delete env.NODE_EXTRA_CA_CERTS
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env })
  let log = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    log += chunk.toString('utf8')
  })
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  )
  const ready = await readReadyLine(child, 10_000).catch((err: unknown) => {
    child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`agent did not get ready: ${(err as Error).message}\n${log}`)
  })
  const tcp = ready.listeners.find((l) => l.kind === 'tcp')
  assert.ok(tcp?.port !== undefined, 'ready line lists the TCP listener')
  const httpAgent = new Agent({ keepAlive: false })
  let killedByTest = false
  const marker = { name: 'SANDCELL_AGENT_TEST_RUN', value: randomUUID() }

  const agent: TestAgent = {
    root,
    socketPath,
    port: tcp.port,
    pid: ready.pid,
    marker,
    accessToken: options.accessToken,
    logs: () => log,
    client(service, clientOptions = {}) {
      return createClient(service, transportFor(agent, httpAgent, clientOptions))
    },
    http: (method, path, requestOptions = {}) =>
      sendHttp(agent, httpAgent, method, path, requestOptions),
    host: (sandboxPath) => join(root, sandboxPath),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
      }
      return exited
    },
    async kill() {
      killedByTest = true
      child.kill('SIGKILL')
      await exited
    },
    exited,
    async dispose() {
      const code = await stopWithin(child, exited, 5000)
      httpAgent.destroy()
      const survivors = await waitForNoMarkedProcesses(marker, 5000)
      rmSync(dir, { recursive: true, force: true })
      assert.deepEqual(
        survivors,
        [],
        `processes outlived the agent:\n${survivors.join('\n')}\n${log.slice(-4000)}`,
      )
      assert.ok(
        killedByTest || code === 0,
        `agent exited with ${String(code)}\n${log.slice(-4000)}`,
      )
    },
  }

  if (options.skipInit !== true) {
    const init = await agent.http('POST', '/init', {
      headers: {
        'content-type': 'application/json',
        ...(options.accessToken === undefined ? {} : { 'x-access-token': options.accessToken }),
      },
      body: JSON.stringify({ envVars: { [marker.name]: marker.value } }),
    })
    if (init.status !== 204) {
      await agent.dispose().catch(() => undefined)
      assert.fail(`/init answered ${init.status}: ${init.text()}`)
    }
  }
  return agent
}

async function readReadyLine(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ pid: number; listeners: { kind: string; port?: number; path?: string }[] }> {
  const readyPipe = child.stdio[3] as Readable
  return new Promise((resolve, reject) => {
    let text = ''
    const timer = setTimeout(
      () => reject(new Error(`no ready line within ${timeoutMs} ms`)),
      timeoutMs,
    )
    readyPipe.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8')
      const newline = text.indexOf('\n')
      if (newline !== -1) {
        clearTimeout(timer)
        const line = text.slice(0, newline)
        if (!line.startsWith('ready ')) {
          reject(new Error(`unexpected ready line ${JSON.stringify(line)}`))
          return
        }
        resolve(JSON.parse(line.slice('ready '.length)) as never)
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`agent exited with ${String(code)} before ready`))
    })
  })
}

async function stopWithin(
  child: ChildProcess,
  exited: Promise<number | null>,
  timeoutMs: number,
): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return child.exitCode
  }
  child.kill('SIGTERM')
  let timer: NodeJS.Timeout | undefined
  const code = await Promise.race([
    exited,
    new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs)
    }),
  ])
  clearTimeout(timer)
  if (code === 'timeout') {
    child.kill('SIGKILL')
    await exited
    return -1
  }
  return code
}

/** Processes whose environment carries the marker (i.e. started by this agent). */
export function markedProcesses(marker: { name: string; value: string }): string[] {
  const needle = `${marker.name}=${marker.value}`
  const found: string[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) {
      continue
    }
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8')
      if (environ.split('\0').includes(needle)) {
        const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()
        found.push(`${entry} ${cmdline}`)
      }
    } catch {
      // Gone while we looked, or a zombie.
    }
  }
  return found
}

async function waitForNoMarkedProcesses(
  marker: { name: string; value: string },
  timeoutMs: number,
): Promise<string[]> {
  const deadline = Date.now() + timeoutMs
  let found = markedProcesses(marker)
  while (found.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 25))
    found = markedProcesses(marker)
  }
  return found
}

function transportFor(agent: TestAgent, httpAgent: Agent, options: ClientOptions): Transport {
  const addHeaders: Interceptor = (next) => (request) => {
    if (options.user !== undefined) {
      request.header.set('authorization', basicAuth(options.user))
    }
    const token = options.accessToken ?? agent.accessToken
    if (token !== undefined) {
      request.header.set('x-access-token', token)
    }
    for (const [key, value] of Object.entries(options.headers ?? {})) {
      request.header.set(key, value)
    }
    return next(request)
  }
  const common = {
    baseUrl: options.tcp === true ? `http://127.0.0.1:${agent.port}` : 'http://agent',
    httpVersion: '1.1' as const,
    nodeOptions:
      options.tcp === true
        ? { agent: httpAgent }
        : { agent: httpAgent, socketPath: agent.socketPath },
    useBinaryFormat: options.binary ?? false,
    interceptors: [addHeaders],
  }
  return options.protocol === 'grpc-web'
    ? createGrpcWebTransport(common)
    : createConnectTransport(common)
}

function sendHttp(
  agent: TestAgent,
  httpAgent: Agent,
  method: string,
  path: string,
  options: {
    headers?: Record<string, string | string[]>
    body?: Buffer | string | Readable
    tcp?: boolean
  },
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        method,
        path,
        agent: httpAgent,
        headers: options.headers,
        ...(options.tcp === true
          ? { host: '127.0.0.1', port: agent.port }
          : { socketPath: agent.socketPath }),
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('error', reject)
        res.on('end', () => {
          const body = Buffer.concat(chunks)
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body,
            json: <T>() => JSON.parse(body.toString('utf8')) as T,
            text: () => body.toString('utf8'),
          })
        })
      },
    )
    req.on('error', reject)
    const body = options.body
    if (body === undefined) {
      req.end()
    } else if (typeof body === 'string' || Buffer.isBuffer(body)) {
      req.end(body)
    } else {
      body.pipe(req)
    }
  })
}

/** Resolves when `check()` returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value !== undefined) {
      return value
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
