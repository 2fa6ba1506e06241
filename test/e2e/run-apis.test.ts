/**
 * The one-shot run APIs end to end on a real server and real sandboxes: Piston's runtimes,
 * execute, packages and interactive WebSocket, Lambdo's /run, sandcell's /languages; the same
 * request through both APIs; hello world in every shipped language; Piston's published
 * examples; Piston's validation messages, content types and 404s; and the API-key switch.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import WebSocket from 'ws'
import {
  assertNoLeaks,
  snapshotLeaks,
  testCgroupParent,
  type LeakSnapshot,
} from '@sandcell/test-utils'
import {
  runTestApiKey,
  startRunServer,
  type PistonResult,
  type RunTestServer,
} from './run-server.js'

const examples = JSON.parse(
  readFileSync(new URL('fixtures/piston-examples.json', import.meta.url), 'utf8'),
) as Record<string, Record<string, unknown>>

let baseline: LeakSnapshot
let server: RunTestServer

before(async () => {
  baseline = snapshotLeaks()
  server = await startRunServer({ run: { poolMin: 1, poolMax: 3 } })
})

after(async () => {
  await server?.close()
  await assertNoLeaks(baseline, { scope: [server.dataDir, testCgroupParent] })
})

async function execute(json: unknown): Promise<PistonResult> {
  const answer = await server.call('POST', '/api/v2/execute', { json })
  assert.equal(answer.status, 200, answer.text)
  return answer.body as PistonResult
}

describe('runtimes and languages', { timeout: 60_000 }, () => {
  it("lists the runnable languages in Piston's shape", async () => {
    const answer = await server.call('GET', '/api/v2/runtimes')
    assert.equal(answer.status, 200)
    const runtimes = answer.body as {
      language: string
      version: string
      aliases: string[]
      runtime?: string
    }[]
    assert.deepEqual(
      runtimes.map((r) => r.language),
      ['python', 'javascript', 'bash', 'c', 'c++'],
    )
    const bash = runtimes.find((r) => r.language === 'bash')
    assert.deepEqual(bash?.aliases, ['sh'])
    assert.equal('runtime' in (bash ?? {}), false, 'runtime only where several serve a language')
    assert.equal(runtimes.find((r) => r.language === 'javascript')?.runtime, 'node')
    for (const runtime of runtimes) {
      assert.match(runtime.version, /^\d+\.\d+\.\d+$/)
    }
  })

  it('lists every configured language with where it runs, and the packages as Piston does', async () => {
    const languages = (await server.call('GET', '/languages')).body as {
      language: string
      available: boolean
      template: string
      reason: string | null
      compiled: boolean
    }[]
    assert.equal(languages.length, 5)
    for (const language of languages) {
      assert.equal(language.available, true, `${language.language}: ${language.reason}`)
      assert.equal(language.template, 'debian')
    }
    assert.deepEqual(
      languages.filter((l) => l.compiled).map((l) => l.language),
      ['c', 'c++'],
    )
    const packages = (await server.call('GET', '/api/v2/packages')).body as {
      language: string
      language_version: string
      installed: boolean
    }[]
    assert.deepEqual(
      packages.map((p) => p.language),
      ['python', 'node', 'bash', 'gcc'],
      'c and c++ are one gcc package',
    )
    assert.ok(packages.every((p) => p.installed))
    const install = await server.call('POST', '/api/v2/packages', {
      json: { language: 'go', version: '*' },
    })
    assert.equal(install.status, 501)
    assert.match((install.body as { message: string }).message, /languages file/)
  })
})

describe('execute', { timeout: 120_000 }, () => {
  it('answers the same request through Piston and Lambdo alike', async () => {
    const code =
      'import sys\nline = input()\nprint(line[::-1], flush=True)\nprint("err", file=sys.stderr)\nsys.exit(3)\n'
    const piston = await execute({
      language: 'python',
      version: '3',
      files: [{ name: 'main.py', content: code }],
      stdin: 'abc',
    })
    assert.equal(piston.language, 'python')
    assert.equal(piston.run.stdout, 'cba\n')
    assert.equal(piston.run.stderr, 'err\n')
    assert.equal(piston.run.output, 'cba\nerr\n')
    assert.equal(piston.run.code, 3)
    assert.equal(piston.run.signal, null)
    assert.equal(piston.run.status, 'RE')
    assert.equal(piston.run.message, 'Exited with error status 3')
    assert.equal(piston.compile, undefined)
    const lambdo = await server.call('POST', '/run', {
      json: {
        language: 'PYTHON',
        version: '3',
        input: 'abc',
        code: [{ filename: 'main.py', content: code }],
      },
    })
    assert.equal(lambdo.status, 200, lambdo.text)
    assert.deepEqual(lambdo.body, { status: 3, stdout: 'cba\n', stderr: 'err\n' })
  })

  it('runs hello world with stdin and args in Python, JavaScript, Bash, C and C++', async () => {
    const programs: Record<string, string> = {
      python: 'import sys\nprint("hello", input(), *sys.argv[1:])\n',
      javascript:
        'const line = require("fs").readFileSync(0, "utf8").split("\\n")[0]\nconsole.log(["hello", line, ...process.argv.slice(2)].join(" "))\n',
      bash: 'read line\necho hello "$line" "$@"\n',
      c: '#include <stdio.h>\nint main(int argc, char **argv) {\n  char line[64];\n  fgets(line, sizeof line, stdin);\n  line[strcspn(line, "\\n")] = 0;\n  printf("hello %s", line);\n  for (int i = 1; i < argc; i++) printf(" %s", argv[i]);\n  printf("\\n");\n}\n',
      'c++':
        '#include <iostream>\n#include <string>\nint main(int argc, char **argv) {\n  std::string line;\n  std::getline(std::cin, line);\n  std::cout << "hello " << line;\n  for (int i = 1; i < argc; i++) std::cout << " " << argv[i];\n  std::cout << std::endl;\n}\n',
    }
    // C needs string.h for strcspn: a compile stage that fails would show here.
    programs.c = `#include <string.h>\n${programs.c ?? ''}`
    const results = await Promise.all(
      Object.entries(programs).map(async ([language, content]) => ({
        language,
        result: await execute({
          language,
          version: '*',
          files: [{ content }],
          stdin: 'world',
          args: ['a b', '$HOME', '*'],
        }),
      })),
    )
    for (const { language, result } of results) {
      assert.equal(
        result.run.stdout,
        'hello world a b $HOME *\n',
        `${language}: ${JSON.stringify(result)}`,
      )
      assert.equal(result.run.code, 0)
      assert.equal(result.run.stderr, '')
      assert.ok(result.run.wall_time > 0)
      if (language === 'c' || language === 'c++') {
        assert.equal(result.compile?.code, 0, result.compile?.stderr)
      } else {
        assert.equal(result.compile, undefined)
      }
    }
  })

  it("runs Piston's published example, and refuses its exact version with Piston's message", async () => {
    for (const example of ['docsExecute', 'readmeExecute']) {
      const published = await server.call('POST', '/api/v2/execute', { json: examples[example] })
      assert.equal(published.status, 400)
      assert.deepEqual(published.body, {
        message: 'js-15.10.0 runtime is unknown',
        reason: 'javascript here is version 18.20.4',
      })
      const result = await execute({ ...examples[example], version: '*' })
      assert.equal(result.language, 'javascript')
      assert.equal(result.version, '18.20.4')
      assert.equal(
        result.run.stdout,
        "[ '/usr/bin/node', '/home/user/code/my_cool_code.js', '1', '2', '3' ]\n",
      )
      assert.equal(result.run.code, 0)
    }
    const unknown = await server.call('POST', '/api/v2/execute', {
      json: examples.readmeUnknownRuntime,
    })
    assert.equal(unknown.status, 400)
    assert.deepEqual(unknown.body, { message: 'html-5.0.0 runtime is unknown' })
  })

  it("validates as Piston does, with Piston's messages", async () => {
    const files = [{ content: 'print(1)' }]
    const cases: [unknown, string][] = [
      [{}, 'language is required as a string'],
      [{ language: 3 }, 'language is required as a string'],
      [{ language: 'python' }, 'version is required as a string'],
      [{ language: 'python', version: '*', files: 'x' }, 'files is required as an array'],
      [
        { language: 'python', version: '*', files: [{ name: 'a.py' }] },
        'files[0].content is required as a string',
      ],
      [{ language: 'python', version: '9', files }, 'python-9 runtime is unknown'],
      [
        { language: 'python', version: '*', files: [{ content: 'AA==', encoding: 'base64' }] },
        'files must include at least one utf8 encoded file',
      ],
      [
        { language: 'python', version: '*', files, run_timeout: '5' },
        'If specified, run_timeout must be a number',
      ],
      [
        { language: 'python', version: '*', files, run_timeout: 3001 },
        'run_timeout cannot exceed the configured limit of 3000',
      ],
      [
        { language: 'python', version: '*', files, run_timeout: -5 },
        'run_timeout must be non-negative',
      ],
      [
        { language: 'c', version: '*', files, compile_memory_limit: 2 ** 40 },
        'compile_memory_limit cannot exceed the configured limit of 536870912',
      ],
      [
        { language: 'python', version: '*', files, args: [1] },
        'If specified, args must be an array of strings',
      ],
    ]
    for (const [json, message] of cases) {
      const answer = await server.call('POST', '/api/v2/execute', { json })
      assert.equal(answer.status, 400, `${JSON.stringify(json)}: ${answer.text}`)
      assert.equal((answer.body as { message: string }).message, message)
    }
  })

  it('reads JSON sent as text/plain (piston-client), refuses other types with 415, answers 404 Not Found', async () => {
    const plain = await server.call('POST', '/api/v2/execute', {
      json: { language: 'py', version: '*', files: [{ content: 'print(6*7)' }] },
      contentType: 'text/plain;charset=UTF-8',
    })
    assert.equal(plain.status, 200, plain.text)
    assert.equal((plain.body as PistonResult).run.stdout, '42\n')
    for (const contentType of ['application/x-www-form-urlencoded', 'application/xml']) {
      const refused = await server.call('POST', '/api/v2/execute', {
        body: 'language=py',
        contentType,
      })
      assert.equal(refused.status, 415, contentType)
      assert.deepEqual(refused.body, { message: 'requests must be of type application/json' })
    }
    const noType = await server.call('POST', '/api/v2/execute', { body: '{}' })
    assert.equal(noType.status, 415)
    const broken = await server.call('POST', '/api/v2/execute', {
      body: '{"language":',
      contentType: 'text/plain',
    })
    assert.equal(broken.status, 400)
    assert.equal(typeof (broken.body as { message: unknown }).message, 'string')
    for (const path of ['/api/v2/nothing', '/api/v2/execute/more', '/api/v2/runtimes/x']) {
      const missing = await server.call('GET', path)
      assert.equal(missing.status, 404, path)
      assert.deepEqual(missing.body, { message: 'Not Found' })
    }
  })

  it("answers Lambdo's bad requests with the field named, any case of language", async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ version: '*', input: '', code: [] }, 400, /missing field `language`/],
      [{ language: 'python', version: '*', code: [] }, 400, /missing field `input`/],
      [{ language: 'python', version: '*', input: '' }, 400, /missing field `code`/],
      [
        { language: 'python', version: '*', input: '', code: [{ filename: 'a.py' }] },
        400,
        /code\[0\]/,
      ],
      [
        { language: 'python', version: '*', input: '', code: [] },
        400,
        /^code must hold at least one file$/,
      ],
      [
        { language: 'COBOL', version: '1', input: '', code: [{ filename: 'a', content: '' }] },
        400,
        /^COBOL-1 runtime is unknown$/,
      ],
      [
        {
          language: 'python',
          version: '*',
          input: '',
          code: [{ filename: '../a.py', content: '' }],
        },
        400,
        /^code\[0\]\.filename "\.\.\/a\.py" leaves the run directory/,
      ],
    ]
    for (const [json, status, message] of cases) {
      const answer = await server.call('POST', '/run', { json })
      assert.equal(answer.status, status, answer.text)
      assert.match((answer.body as { message: string }).message, message)
    }
    const nodeRun = await server.call('POST', '/run', {
      json: {
        language: 'Node',
        version: '18',
        input: '',
        code: [{ filename: 'index.js', content: 'console.log(1 + 1)' }],
      },
    })
    assert.deepEqual(nodeRun.body, { status: 0, stdout: '2\n', stderr: '' })
  })
})

interface WsMessage {
  type: string
  [key: string]: unknown
}

/** Opens the interactive socket; collects messages until it closes. */
function connect(): Promise<{
  socket: WebSocket
  messages: WsMessage[]
  closed: Promise<{ code: number; reason: string }>
  next(type: string): Promise<WsMessage>
}> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${server.url.replace('http', 'ws')}/api/v2/connect`)
    const messages: WsMessage[] = []
    const waiters: { type: string; resolve: (m: WsMessage) => void }[] = []
    const closed = new Promise<{ code: number; reason: string }>((done) =>
      socket.once('close', (code, reason) => done({ code, reason: reason.toString() })),
    )
    socket.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString()) as WsMessage
      messages.push(message)
      for (const waiter of waiters.filter((w) => w.type === message.type)) {
        waiters.splice(waiters.indexOf(waiter), 1)
        waiter.resolve(message)
      }
    })
    socket.once('error', reject)
    socket.once('open', () =>
      resolve({
        socket,
        messages,
        closed,
        next: (type) => {
          const seen = messages.find((m) => m.type === type)
          return seen !== undefined
            ? Promise.resolve(seen)
            : new Promise((done) => waiters.push({ type, resolve: done }))
        },
      }),
    )
  })
}

describe('interactive WebSocket', { timeout: 60_000 }, () => {
  it("runs Piston's published flow: init, runtime, stage, stdin echoed, killed at the timeout", async () => {
    const ws = await connect()
    ws.socket.send(JSON.stringify({ ...examples.readmeInteractiveInit, run_timeout: 1500 }))
    const runtime = await ws.next('runtime')
    assert.deepEqual(runtime, { type: 'runtime', language: 'bash', version: '5.2.15' })
    assert.deepEqual(await ws.next('stage'), { type: 'stage', stage: 'run' })
    ws.socket.send(JSON.stringify({ type: 'data', stream: 'stdin', data: 'Hello World!' }))
    const data = await ws.next('data')
    assert.deepEqual(data, { type: 'data', stream: 'stdout', data: 'Hello World!' })
    const exit = await ws.next('exit')
    assert.equal(exit.stage, 'run')
    assert.equal(exit.code, null)
    assert.equal(exit.signal, 'SIGKILL')
    assert.equal(exit.status, 'TO')
    assert.deepEqual(await ws.closed, { code: 4999, reason: 'Job Completed' })
  })

  it('streams a compiled program stage by stage and ends stdin on eof', async () => {
    const ws = await connect()
    ws.socket.send(
      JSON.stringify({
        type: 'init',
        language: 'c',
        version: '*',
        files: [
          {
            content:
              '#include <stdio.h>\nint main(){int c,n=0;while((c=getchar())!=EOF)n++;printf("%d bytes\\n",n);fprintf(stderr,"done\\n");return 0;}',
          },
        ],
      }),
    )
    ws.socket.send(JSON.stringify({ type: 'data', stream: 'stdin', data: 'early ' }))
    await ws.next('runtime')
    const compileExit = await ws.next('exit')
    assert.deepEqual(compileExit, {
      type: 'exit',
      stage: 'compile',
      code: 0,
      signal: null,
      status: null,
      message: null,
    })
    ws.socket.send(JSON.stringify({ type: 'data', stream: 'stdin', data: 'late' }))
    ws.socket.send(JSON.stringify({ type: 'eof' }))
    assert.deepEqual(await ws.closed, { code: 4999, reason: 'Job Completed' })
    assert.deepEqual(
      ws.messages.filter((m) => m.type === 'stage').map((m) => m.stage),
      ['compile', 'run'],
    )
    const data = ws.messages.filter((m) => m.type === 'data')
    assert.deepEqual(
      data
        .filter((m) => m.stream === 'stdout')
        .map((m) => m.data)
        .join(''),
      '10 bytes\n',
    )
    assert.deepEqual(
      data
        .filter((m) => m.stream === 'stderr')
        .map((m) => m.data)
        .join(''),
      'done\n',
    )
    assert.deepEqual(ws.messages.at(-1), {
      type: 'exit',
      stage: 'run',
      code: 0,
      signal: null,
      status: null,
      message: null,
    })
  })

  it("closes with Piston's codes: not initialized, twice initialized, bad signal, no init, errors", async () => {
    const early = await connect()
    early.socket.send(JSON.stringify({ type: 'data', stream: 'stdin', data: 'x' }))
    assert.deepEqual(await early.closed, { code: 4003, reason: 'Not yet initialized' })

    const idle = await connect()
    assert.deepEqual(await idle.closed, { code: 4001, reason: 'Initialization Timeout' })

    const unknown = await connect()
    unknown.socket.send(
      JSON.stringify({
        type: 'init',
        language: 'html',
        version: '5.0.0',
        files: [{ content: '' }],
      }),
    )
    assert.deepEqual(await unknown.closed, { code: 4002, reason: 'Notified Error' })
    assert.deepEqual(unknown.messages, [
      { type: 'error', message: 'html-5.0.0 runtime is unknown' },
    ])

    const twice = await connect()
    const init = { ...examples.readmeInteractiveInit, files: [{ content: 'sleep 30' }] }
    twice.socket.send(JSON.stringify(init))
    await twice.next('stage')
    twice.socket.send(JSON.stringify({ type: 'signal', signal: 'SIGNOPE' }))
    assert.deepEqual(await twice.closed, { code: 4005, reason: 'Invalid signal' })

    const signalled = await connect()
    signalled.socket.send(JSON.stringify(init))
    await signalled.next('stage')
    signalled.socket.send(JSON.stringify(init))
    assert.deepEqual(await signalled.closed, { code: 4000, reason: 'Already Initialized' })

    const killed = await connect()
    killed.socket.send(JSON.stringify(init))
    await killed.next('stage')
    killed.socket.send(JSON.stringify({ type: 'data', stream: 'stdout', data: 'x' }))
    assert.deepEqual(await killed.closed, { code: 4004, reason: 'Can only write to stdin' })

    const terminated = await connect()
    terminated.socket.send(JSON.stringify(init))
    await terminated.next('stage')
    terminated.socket.send(JSON.stringify({ type: 'signal', signal: 'SIGTERM' }))
    const exit = await terminated.next('exit')
    assert.equal(exit.signal, 'SIGTERM')
    assert.equal(exit.status, 'SG')
    assert.deepEqual(await terminated.closed, { code: 4999, reason: 'Job Completed' })
  })
})

describe('authentication', { timeout: 60_000 }, () => {
  it('serves the run APIs without a key by default, while the E2B API still needs one', async () => {
    assert.equal((await server.call('GET', '/api/v2/runtimes')).status, 200)
    assert.equal((await server.call('GET', '/sandboxes')).status, 401)
  })

  it('asks for the API key on the run APIs when runApiAuth is api-key', async () => {
    const guarded = await startRunServer({ runApiAuth: 'api-key', run: { poolMin: 0 } })
    try {
      for (const [method, path] of [
        ['GET', '/api/v2/runtimes'],
        ['POST', '/api/v2/execute'],
        ['POST', '/run'],
        ['GET', '/languages'],
      ] as const) {
        const answer = await guarded.call(method, path, method === 'POST' ? { json: {} } : {})
        assert.equal(answer.status, 401, path)
      }
      const allowed = await guarded.call('GET', '/api/v2/runtimes', {
        headers: { 'x-api-key': runTestApiKey },
      })
      assert.equal(allowed.status, 200)
    } finally {
      await guarded.close()
    }
  })
})
