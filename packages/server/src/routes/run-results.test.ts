import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fastifyWebsocket from '@fastify/websocket'
import Fastify, { type FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import { parseLanguages } from '@sandcell/runs'
import type { RunRequest, RunResult, RunService, StageEnd, StageResult } from '@sandcell/runs'
import { pistonRoutes } from './piston/piston-routes.js'
import { lambdoRoutes } from './run/lambdo.js'

const [config] = parseLanguages(
  {
    apiVersion: 'sandcell/v1',
    kind: 'Languages',
    languages: [
      {
        name: 'c',
        version: '12.2.0',
        template: 'debian',
        main: 'main.c',
        run: { command: ['./a.out'] },
      },
    ],
  },
  'test.yaml',
)

/** The run each request gets: one stage that ends as the test says. */
let answer: StageEnd = { kind: 'exited', code: 0 }

function stage(end: StageEnd): StageResult {
  return {
    stdout: 'out',
    stderr: 'err',
    output: 'outerr',
    end,
    wallTimeMs: 12.5,
    cpuTimeMs: 3.25,
    memoryBytes: null,
  }
}

/** Only what the routes use of a run service; every run ends with `answer`. */
const runs = {
  catalog: {
    resolve: () => Promise.resolve({ config, template: 'debian', version: '12.2.0' }),
  },
  settings: { maxFiles: 8, maxFilesBytes: 1024 },
  stageLimits: () => ({ timeoutMs: 3000, memoryMiB: 256 }),
  execute(request: RunRequest): Promise<RunResult> {
    const run = stage(answer)
    request.hooks?.onRuntime?.(request.language)
    request.hooks?.onStage?.('run')
    request.hooks?.onStageEnd?.('run', run)
    return Promise.resolve({
      language: 'c',
      version: '12.2.0',
      template: 'debian',
      run,
      timingsMs: { queue: 0.5 },
    })
  },
} as unknown as RunService

/** Each kind of end with Piston's code, signal, status and message as JSON. */
const kinds: { end: StageEnd; piston: [string, string, string, string]; lambdo: string }[] = [
  {
    end: { kind: 'exited', code: 0 },
    piston: ['0', 'null', 'null', 'null'],
    lambdo: '{"status":0,"stdout":"out","stderr":"err"}',
  },
  {
    end: { kind: 'exited', code: 3 },
    piston: ['3', 'null', '"RE"', '"Exited with error status 3"'],
    lambdo: '{"status":3,"stdout":"out","stderr":"err"}',
  },
  {
    end: { kind: 'signaled', signal: 'SIGSEGV' },
    piston: ['null', '"SIGSEGV"', '"SG"', '"Caught fatal signal 11"'],
    lambdo: '{"status":139,"stdout":"out","stderr":"err\\nsandcell: Caught fatal signal 11"}',
  },
  {
    end: { kind: 'out-of-memory', signal: 'SIGKILL', memoryMiB: 256 },
    piston: ['null', '"SIGKILL"', '"SG"', '"Out of memory (limit 256 MiB)"'],
    lambdo:
      '{"status":137,"stdout":"out","stderr":"err\\nsandcell: Out of memory (limit 256 MiB)"}',
  },
  {
    end: { kind: 'timed-out', timeoutMs: 3000 },
    piston: ['null', '"SIGKILL"', '"TO"', '"Time limit exceeded (3000 ms wall clock)"'],
    lambdo: '{"status":128,"stdout":"out","stderr":"err\\nTimeout"}',
  },
  {
    end: { kind: 'output-limit', stream: 'stdout', maxChars: 65536 },
    piston: ['null', '"SIGKILL"', '"OL"', '"stdout length exceeded (limit 65536 characters)"'],
    lambdo:
      '{"status":137,"stdout":"out","stderr":"err\\nsandcell: stdout length exceeded (limit 65536 characters)"}',
  },
  {
    end: { kind: 'output-limit', stream: 'stderr', maxChars: 65536 },
    piston: ['null', '"SIGKILL"', '"EL"', '"stderr length exceeded (limit 65536 characters)"'],
    lambdo:
      '{"status":137,"stdout":"out","stderr":"err\\nsandcell: stderr length exceeded (limit 65536 characters)"}',
  },
]

let app: FastifyInstance
let dir: string
/** The WebSocket goes through a Unix socket (injectWS of this @fastify/websocket sends a
 * numeric Sec-WebSocket-Version, which ws 8.23 refuses). */
let socketPath: string

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sandcell-run-results-'))
  socketPath = join(dir, 'api.sock')
  app = Fastify()
  await app.register(fastifyWebsocket)
  pistonRoutes(app, { runs, bodyLimit: 1 << 20 })
  lambdoRoutes(app, { runs, bodyLimit: 1 << 20 })
  await app.listen({ path: socketPath })
})

after(async () => {
  await app.close()
  rmSync(dir, { recursive: true, force: true })
})

/** The messages of one interactive run, until the server closes the socket. */
async function interactive(): Promise<string[]> {
  const socket = new WebSocket(`ws+unix://${socketPath}:/api/v2/connect`)
  const messages: string[] = []
  const closed = new Promise<number>((resolve) => socket.on('close', resolve))
  socket.on('message', (data: Buffer) => messages.push(data.toString('utf8')))
  socket.on('open', () =>
    socket.send(
      JSON.stringify({ type: 'init', language: 'c', version: '*', files: [{ content: 'x' }] }),
    ),
  )
  assert.equal(await closed, 4999)
  return messages
}

describe('run results on the wire', () => {
  for (const { end, piston, lambdo } of kinds) {
    const [code, signal, status, message] = piston
    const name = JSON.stringify(end)

    it(`answers Piston's execute for ${name}`, async () => {
      answer = end
      const response = await app.inject({
        method: 'POST',
        url: '/api/v2/execute',
        payload: { language: 'c', version: '*', files: [{ content: 'x' }] },
      })
      assert.equal(response.statusCode, 200, response.body)
      assert.equal(
        response.body,
        `{"run":{"stdout":"out","stderr":"err","output":"outerr","code":${code},"signal":${signal},"message":${message},"status":${status},"cpu_time":3.25,"wall_time":12.5,"memory":null},"language":"c","version":"12.2.0"}`,
      )
    })

    it(`sends Piston's exit message for ${name}`, async () => {
      answer = end
      const messages = await interactive()
      assert.deepEqual(messages, [
        '{"type":"runtime","language":"c","version":"12.2.0"}',
        '{"type":"stage","stage":"run"}',
        `{"type":"exit","stage":"run","code":${code},"signal":${signal},"status":${status},"message":${message}}`,
      ])
    })

    it(`answers Lambdo's run for ${name}`, async () => {
      answer = end
      const response = await app.inject({
        method: 'POST',
        url: '/run',
        payload: {
          language: 'c',
          version: '*',
          input: '',
          code: [{ filename: 'main.c', content: 'x' }],
        },
      })
      assert.equal(response.statusCode, 200, response.body)
      assert.equal(response.body, lambdo)
    })
  }
})
