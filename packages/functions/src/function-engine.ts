/**
 * Runs functions: each version gets container instances made from a template whose layers are
 * the function's code, sandcell's runners and the base template; an instance's runner (Python
 * or Node.js, started as the sandbox's root, dropped to its user) answers HTTP on a Unix socket
 * in the sandbox's run directory, which the host reaches through the same bind mount as the
 * agent's. Instances serve one request at a time, are kept warm for reuse and destroyed when
 * idle; a request that outlives its timeout takes its instance with it.
 */
import { createHash } from 'node:crypto'
import { cpSync, existsSync, mkdirSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { dirname, join } from 'node:path'
import { runCommand } from '@sandcell/envd-client'
import { shiftOwnership, writeBuiltTemplate } from '@sandcell/images'
import type { ContainerDriver, Sandbox, SandboxLimits } from '@sandcell/runtime'
import { errorMessage, type Logger } from '@sandcell/shared'
import type { FunctionRuntime } from './code-archive.js'
import type { FunctionConfig } from './function-config.js'

/** One deployed version of a function, as the registry hands it over. */
export interface FunctionVersion {
  name: string
  /** `sha256:<hex>` of the code upload. */
  digest: string
  runtime: FunctionRuntime
  /** Handler file relative to the code. */
  entry: string
  config: FunctionConfig
  /** Host directory of the code layer (it holds `function/`). */
  layerDir: string
}

export interface FunctionRequest {
  method: string
  /** Path and query as the client sent them (`/run/<name>/…?…`). */
  path: string
  headers: IncomingHttpHeaders
  body: Buffer
}

export interface FunctionResponse {
  status: number
  headers: Record<string, string>
  body: Buffer
}

export interface FunctionEngineOptions {
  driver: ContainerDriver
  /** `<dataDir>/functions`: runners and code layers live below. */
  functionsDir: string
  /** Host uid of a sandbox's root (the code and runner layers are owned by it). */
  uidBase: number
  /** The template under every function (its python3 and node). @default 'debian' */
  baseTemplate?: string
  /** Limits of an instance when ol.yaml sets none. */
  limits: SandboxLimits
  labels: Record<string, string>
  log: Logger
  /** A request's longest run when ol.yaml sets no timeout. @default 30000 */
  timeoutMs?: number
  /** How long an idle instance is kept. @default 60000 */
  idleMs?: number
}

/** Where an instance's code and runners appear inside its sandbox. */
const codeMount = '/function'
const runnersMount = '/opt/sandcell-fn'
const runnersVersion = '1'
/** The runner's socket inside the sandbox's run dir, which the host sees as well. */
const socketName = 'fn.sock'
const startTimeoutMs = 30_000

interface Instance {
  sandbox: Sandbox
  socketPath: string
  idleTimer?: NodeJS.Timeout
}

/** A body of the function API's errors: `{ error: { code, message, details? } }`. */
export function functionError(
  status: number,
  code: string,
  message: string,
  details?: Record<string, unknown>,
): FunctionResponse {
  return {
    status,
    headers: { 'content-type': 'application/json' },
    body: Buffer.from(
      JSON.stringify({ error: { code, message, ...(details === undefined ? {} : { details }) } }),
    ),
  }
}

/** A build id made from a code digest: drivers find the version's template by it. */
function templateIdOf(digest: string): string {
  const hex = createHash('sha256').update(`function:${digest}`).digest('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`
}

export class FunctionEngine {
  readonly #options: FunctionEngineOptions
  readonly #idle = new Map<string, Instance[]>()
  readonly #busy = new Set<Instance>()
  readonly #templates = new Map<string, Promise<string>>()
  readonly #runnersDir: string
  #closed = false

  constructor(options: FunctionEngineOptions) {
    this.#options = options
    this.#runnersDir = join(options.functionsDir, 'runners', runnersVersion)
  }

  /** Installs the runners' layer (once per runner version). */
  async start(): Promise<void> {
    if (existsSync(this.#runnersDir)) {
      return
    }
    const target = join(this.#runnersDir, runnersMount)
    mkdirSync(dirname(target), { recursive: true, mode: 0o755 })
    cpSync(new URL('../runners', import.meta.url).pathname, target, { recursive: true })
    await shiftOwnership(this.#runnersDir, { offset: this.#options.uidBase })
  }

  /** The template a version's instances start from (written once per digest). */
  #template(version: FunctionVersion): Promise<string> {
    let template = this.#templates.get(version.digest)
    if (template === undefined) {
      template = (async () => {
        const base = await this.#options.driver.templateLayers(
          this.#options.baseTemplate ?? 'debian',
        )
        const buildId = templateIdOf(version.digest)
        await writeBuiltTemplate(this.#options.driver.buildsDir, {
          version: 1,
          buildId,
          lowerDirs: [version.layerDir, this.#runnersDir, ...base.lowerDirs],
          hostBinds: [...base.hostBinds],
          layerKeys: [],
          owner: 'functions',
          defaults: { env: version.config.environment ?? {}, user: 'user' },
          createdAt: new Date().toISOString(),
        })
        return buildId
      })()
      this.#templates.set(version.digest, template)
      template.catch(() => this.#templates.delete(version.digest))
    }
    return template
  }

  #limits(config: FunctionConfig): SandboxLimits {
    const limits = config.limits
    return {
      ...this.#options.limits,
      ...(limits?.memory_mb === undefined ? {} : { memoryMiB: limits.memory_mb }),
      ...(limits?.cpu_percent === undefined ? {} : { cpus: limits.cpu_percent / 100 }),
      ...(limits?.procs === undefined ? {} : { pids: limits.procs }),
    }
  }

  /**
   * A new instance with its runner ready.
   * @returns the instance, or an error response (the handler failed to load)
   */
  async #createInstance(version: FunctionVersion): Promise<Instance | FunctionResponse> {
    const template = await this.#template(version)
    const sandbox = await this.#options.driver.create({
      template,
      limits: this.#limits(version.config),
      labels: { ...this.#options.labels, function: version.name },
      network: true,
    })
    const socketPath = join(dirname(sandbox.info.agentSocket), socketName)
    const runner =
      version.runtime === 'python'
        ? { cmd: '/usr/bin/python3', args: ['-u', `${runnersMount}/python-runner.py`] }
        : { cmd: '/usr/bin/node', args: [`${runnersMount}/node-runner.mjs`] }
    let stderr = ''
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`the runner did not start within ${startTimeoutMs} ms`)),
          startTimeoutMs,
        )
        // Runs for the instance's life: the agent keeps the process when this stream ends.
        runCommand(sandbox.connect(), {
          cmd: runner.cmd,
          args: [
            ...runner.args,
            `/.sandcell/run/${socketName}`,
            codeMount,
            version.entry,
            version.name,
            'user',
          ],
          user: 'root',
          envs: version.config.environment ?? {},
          cwd: codeMount,
          onStdout: (chunk) => {
            if (Buffer.from(chunk).toString('utf8').includes('ready')) {
              clearTimeout(timer)
              resolve()
            }
          },
          onStderr: (chunk) => {
            stderr = (stderr + Buffer.from(chunk).toString('utf8')).slice(-16_384)
          },
        })
          .then((result) => {
            clearTimeout(timer)
            reject(new Error(`exited with code ${result.exitCode}`))
          })
          .catch((err: unknown) => {
            clearTimeout(timer)
            reject(err instanceof Error ? err : new Error(String(err)))
          })
      })
    } catch (err) {
      await sandbox.destroy({ reason: 'the function runner did not start', cause: err })
      return functionError(500, 'INIT_ERROR', `the function did not load: ${errorMessage(err)}`, {
        traceback: stderr,
      })
    }
    return { sandbox, socketPath }
  }

  /** Sends the request to an instance of the version (reused when one is idle). */
  async invoke(version: FunctionVersion, request: FunctionRequest): Promise<FunctionResponse> {
    if (this.#closed) {
      return functionError(503, 'UNAVAILABLE', 'the server is stopping')
    }
    const idle = this.#idle.get(version.digest)
    let instance = idle?.pop()
    if (instance !== undefined) {
      clearTimeout(instance.idleTimer)
    } else {
      const created = await this.#createInstance(version)
      if (!('sandbox' in created)) {
        return created
      }
      instance = created
    }
    this.#busy.add(instance)
    const timeoutMs = version.config.limits?.timeout_ms ?? this.#options.timeoutMs ?? 30_000
    try {
      const response = await this.#send(instance, request, timeoutMs)
      this.#release(version.digest, instance)
      return response
    } catch (err) {
      this.#busy.delete(instance)
      const stats = await instance.sandbox.stats().catch(() => undefined)
      await instance.sandbox.destroy({ reason: 'a function request failed', cause: err })
      if (err instanceof RequestTimeout) {
        return functionError(504, 'TIMEOUT', `the function did not answer within ${timeoutMs} ms`)
      }
      if (stats !== undefined && stats.oomKills > 0) {
        return functionError(
          500,
          'OUT_OF_MEMORY',
          `the function ran out of memory (limit ${Math.round(stats.memoryLimitBytes / 1048576)} MiB)`,
        )
      }
      return functionError(
        502,
        'INSTANCE_FAILED',
        `the function's instance ended: ${errorMessage(err)}`,
      )
    }
  }

  #release(digest: string, instance: Instance): void {
    this.#busy.delete(instance)
    if (this.#closed) {
      void instance.sandbox.destroy({ reason: 'the server is stopping' })
      return
    }
    const list = this.#idle.get(digest) ?? []
    list.push(instance)
    this.#idle.set(digest, list)
    instance.idleTimer = setTimeout(() => {
      const at = list.indexOf(instance)
      if (at !== -1) {
        list.splice(at, 1)
        // Background teardown: a failure is logged, nothing waits for it.
        instance.sandbox
          .destroy({ reason: 'idle function instance' })
          .catch((err: unknown) =>
            this.#options.log.warn({ err }, 'cannot destroy an idle instance'),
          )
      }
    }, this.#options.idleMs ?? 60_000)
    instance.idleTimer.unref()
  }

  #send(
    instance: Instance,
    request: FunctionRequest,
    timeoutMs: number,
  ): Promise<FunctionResponse> {
    return new Promise((resolve, reject) => {
      const headers = { ...request.headers, 'content-length': String(request.body.length) }
      delete headers.connection
      delete headers['transfer-encoding']
      const outgoing = httpRequest(
        { socketPath: instance.socketPath, method: request.method, path: request.path, headers },
        (response) => {
          const chunks: Buffer[] = []
          response.on('data', (chunk: Buffer) => chunks.push(chunk))
          response.on('end', () => {
            clearTimeout(timer)
            const out: Record<string, string> = {}
            for (const [key, value] of Object.entries(response.headers)) {
              if (value !== undefined && key !== 'connection' && key !== 'keep-alive') {
                out[key] = Array.isArray(value) ? value.join(', ') : value
              }
            }
            resolve({
              status: response.statusCode ?? 502,
              headers: out,
              body: Buffer.concat(chunks),
            })
          })
          response.on('error', reject)
        },
      )
      const timer = setTimeout(() => {
        outgoing.destroy(new RequestTimeout())
      }, timeoutMs)
      outgoing.on('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      outgoing.end(request.body)
    })
  }

  /** Destroys every instance (busy ones when their request ends). */
  async close(): Promise<void> {
    this.#closed = true
    const idle = [...this.#idle.values()].flat()
    this.#idle.clear()
    await Promise.allSettled(
      idle.map((instance) => {
        clearTimeout(instance.idleTimer)
        return instance.sandbox.destroy({ reason: 'the server is stopping' })
      }),
    )
  }
}

class RequestTimeout extends Error {
  constructor() {
    super('the request timed out')
  }
}
