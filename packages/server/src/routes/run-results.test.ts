import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fastifyWebsocket from '@fastify/websocket'
import Fastify, { type FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import { parseLanguages } from '@sandcell/runs'
import type {
  RunRequest,
  RunResult,
  RunService,
  StageEnd,
  StageName,
  StageResult,
} from '@sandcell/runs'
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

/** The stages of the run each request gets, ending as the test says. */
let answer: Partial<Record<StageName, StageEnd>> = {}

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

/** Only what the routes use of a run service; every run has the stages of `answer`. */
const runs = {
  catalog: {
    resolve: () => Promise.resolve({ config, template: 'debian', version: '12.2.0' }),
  },
  settings: { maxFiles: 8, maxFilesBytes: 1024 },
  stageLimits: () => ({ timeoutMs: 3000, memoryMiB: 256 }),
  execute(request: RunRequest): Promise<RunResult> {
    const result: RunResult = {
      language: 'c',
      version: '12.2.0',
      template: 'debian',
      timingsMs: {},
    }
    request.hooks?.onRuntime?.(request.language)
    for (const name of ['compile', 'run'] as const) {
      const end = answer[name]
      if (end !== undefined) {
        result[name] = stage(end)
        request.hooks?.onStage?.(name)
        request.hooks?.onStageEnd?.(name, result[name])
      }
    }
    return Promise.resolve(result)
  },
} as unknown as RunService

/** Each kind of end: Piston's code, signal, status and message; Lambdo's status and note. */
const kinds: [StageEnd, Record<string, unknown>, number, string][] = [
  [{ kind: 'exited', code: 0 }, { code: 0, signal: null, status: null, message: null }, 0, ''],
  [
    { kind: 'exited', code: 3 },
    { code: 3, signal: null, status: 'RE', message: 'Exited with error status 3' },
    3,
    '',
  ],
  [
    { kind: 'signaled', signal: 'SIGSEGV' },
    { code: null, signal: 'SIGSEGV', status: 'SG', message: 'Caught fatal signal 11' },
    139,
    'sandcell: Caught fatal signal 11',
  ],
  [
    { kind: 'out-of-memory', signal: 'SIGKILL', memoryMiB: 256 },
    { code: null, signal: 'SIGKILL', status: 'SG', message: 'Out of memory (limit 256 MiB)' },
    137,
    'sandcell: Out of memory (limit 256 MiB)',
  ],
  [
    { kind: 'timed-out', timeoutMs: 3000 },
    {
      code: null,
      signal: 'SIGKILL',
      status: 'TO',
      message: 'Time limit exceeded (3000 ms wall clock)',
    },
    128,
    'Timeout',
  ],
  ...(['stdout', 'stderr'] as const).map(
    (stream): [StageEnd, Record<string, unknown>, number, string] => {
      const message = `${stream} length exceeded (limit 65536 characters)`
      return [
        { kind: 'output-limit', stream, maxChars: 65536 },
        { code: null, signal: 'SIGKILL', status: stream === 'stdout' ? 'OL' : 'EL', message },
        137,
        `sandcell: ${message}`,
      ]
    },
  ),
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

/** The answer to a POST, which must succeed. */
async function post(url: string, payload: Record<string, unknown>): Promise<string> {
  const response = await app.inject({ method: 'POST', url, payload })
  assert.equal(response.statusCode, 200, response.body)
  return response.body
}

const pistonRequest = { language: 'c', version: '*', files: [{ content: 'x' }] }

describe('run results on the wire', () => {
  for (const [end, outcome, lambdoStatus, note] of kinds) {
    const { code, signal, status, message } = outcome
    const name = JSON.stringify(end)

    it(`answers Piston's execute for ${name}`, async () => {
      answer = { run: end }
      const stage = {
        stdout: 'out',
        stderr: 'err',
        output: 'outerr',
        code,
        signal,
        message,
        status,
      }
      const times = { cpu_time: 3.25, wall_time: 12.5, memory: null }
      assert.equal(
        await post('/api/v2/execute', pistonRequest),
        JSON.stringify({ run: { ...stage, ...times }, language: 'c', version: '12.2.0' }),
      )
    })

    it(`sends Piston's exit message for ${name}`, async () => {
      answer = { run: end }
      assert.deepEqual(await interactive(), [
        '{"type":"runtime","language":"c","version":"12.2.0"}',
        '{"type":"stage","stage":"run"}',
        JSON.stringify({ type: 'exit', stage: 'run', code, signal, status, message }),
      ])
    })

    it(`answers Lambdo's run for ${name}`, async () => {
      answer = { run: end }
      const body = await post('/run', {
        language: 'c',
        version: '*',
        input: '',
        code: [{ filename: 'main.c', content: 'x' }],
      })
      const stderr = note === '' ? 'err' : `err\n${note}`
      assert.equal(body, JSON.stringify({ status: lambdoStatus, stdout: 'out', stderr }))
    })
  }

  it('reports a failed compile stage as the run stage too, as Piston does', async () => {
    answer = { compile: { kind: 'exited', code: 1 } }
    const body = JSON.parse(await post('/api/v2/execute', pistonRequest)) as {
      compile: { status: string }
      run: unknown
    }
    assert.equal(body.compile.status, 'RE')
    assert.deepEqual(body.run, body.compile)
  })
})
