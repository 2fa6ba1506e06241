/**
 * A real OCI registry for tests: Debian's `docker-registry serve` on 127.0.0.1 with its storage
 * in a temp dir, optionally behind htpasswd (Basic) auth, its access log readable by the test.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import bcrypt from 'bcryptjs'
import type { TokenServer } from './token-server.js'

export interface TestRegistryOptions {
  /** A directory of the test's: the config, htpasswd file and storage go there. */
  dir: string
  /** Require this login (htpasswd, Basic auth; works over plain http). */
  auth?: { username: string; password: string }
  /** Require bearer tokens from this token service instead (see `startTokenServer`). */
  tokenAuth?: Pick<TokenServer, 'realm' | 'service' | 'issuer' | 'certFile'>
  /** How long the registry may take to answer GET /v2/, ms. @default 15000 */
  startTimeoutMs?: number
}

/** One line of the registry's access log. */
export interface RegistryRequest {
  method: string
  path: string
  status: number
}

export interface TestRegistry extends AsyncDisposable {
  /** `127.0.0.1:<port>`: an image reference starts with it. */
  host: string
  /** The registry's filesystem storage. */
  storageDir: string
  pid: number
  /** Every request served so far, oldest first. */
  requests(): RegistryRequest[]
  /**
   * Rewrites a stored blob's bytes (same size, one byte flipped) so that the registry serves
   * content that no longer matches its digest.
   */
  corruptBlob(digest: string): void
  /** Stops the registry and waits for its exit (SIGKILL after 5 s). Safe to call twice. */
  stop(): Promise<void>
}

/**
 * Starts `docker-registry serve` on a free port of 127.0.0.1 and resolves once `GET /v2/`
 * answers (200, or 401 with auth).
 * @throws Error with the registry's output when it exits or stays silent past the deadline
 */
export async function startTestRegistry(options: TestRegistryOptions): Promise<TestRegistry> {
  const storageDir = join(options.dir, 'storage')
  mkdirSync(storageDir, { recursive: true })
  const htpasswd = join(options.dir, 'htpasswd')
  if (options.auth !== undefined) {
    const hash = bcrypt.hashSync(options.auth.password, 4)
    writeFileSync(htpasswd, `${options.auth.username}:${hash}\n`)
  }
  const configPath = join(options.dir, 'registry.yml')
  writeFileSync(
    configPath,
    [
      'version: 0.1',
      'log:',
      '  level: info',
      '  formatter: json',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storageDir}`,
      '  delete:',
      '    enabled: true',
      'http:',
      '  addr: 127.0.0.1:0',
      '  secret: sandcell-test-registry',
      ...(options.auth === undefined
        ? []
        : ['auth:', '  htpasswd:', '    realm: sandcell-test', `    path: ${htpasswd}`]),
      ...(options.tokenAuth === undefined
        ? []
        : [
            'auth:',
            '  token:',
            `    realm: ${options.tokenAuth.realm}`,
            `    service: ${options.tokenAuth.service}`,
            `    issuer: ${options.tokenAuth.issuer}`,
            `    rootcertbundle: ${options.tokenAuth.certFile}`,
          ]),
      '',
    ].join('\n'),
  )
  const child = spawn('docker-registry', ['serve', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve())
  })
  const collect = (chunk: Buffer): void => {
    output += chunk.toString('utf8')
  }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return
    }
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  }
  try {
    const deadline = Date.now() + (options.startTimeoutMs ?? 15_000)
    let host: string | undefined
    for (;;) {
      host ??= /"listening on (127\.0\.0\.1:\d+)"/.exec(output)?.[1]
      if (host !== undefined) {
        const status = await fetch(`http://${host}/v2/`).then(
          (response) => response.status,
          () => 0,
        )
        const guarded = options.auth !== undefined || options.tokenAuth !== undefined
        if (status === 200 || (status === 401 && guarded)) {
          break
        }
      }
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`docker-registry exited before serving:\n${output}`)
      }
      if (Date.now() > deadline) {
        throw new Error(`docker-registry did not answer GET /v2/ in time:\n${output}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    return {
      host,
      storageDir,
      pid: child.pid as number,
      requests: () => parseAccessLog(output),
      corruptBlob(digest: string) {
        const hex = digest.replace(/^sha256:/, '')
        const path = join(
          storageDir,
          'docker/registry/v2/blobs/sha256',
          hex.slice(0, 2),
          hex,
          'data',
        )
        const bytes = readFileSync(path)
        bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff
        writeFileSync(path, bytes)
      },
      stop,
      [Symbol.asyncDispose]: stop,
    }
  } catch (err) {
    await stop()
    throw err
  }
}

/** Requests from the access log's combined-format lines (`"GET /v2/ HTTP/1.1" 200 …`). */
function parseAccessLog(output: string): RegistryRequest[] {
  const requests: RegistryRequest[] = []
  for (const match of output.matchAll(/"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) /g)) {
    requests.push({
      method: match[1] as string,
      path: match[2] as string,
      status: Number(match[3]),
    })
  }
  return requests
}
