/**
 * Bad input to the run APIs, each answered precisely while the server and other runs go on:
 * unknown runtimes, empty and huge files, binary content, path traversal, infinite loops, fork
 * bombs, memory hogs, output floods, compile errors; isolation between runs; and a burst beyond
 * the concurrency limit, where the excess gets 429 with Retry-After and the rest succeed.
 */
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  testCgroupParent,
  waitFor,
  type LeakSnapshot,
} from '@sandcell/test-utils'
import { startRunServer, type PistonResult, type RunTestServer } from './run-server.js'

const examples = JSON.parse(
  readFileSync(new URL('fixtures/piston-examples.json', import.meta.url), 'utf8'),
) as Record<string, string>

let baseline: LeakSnapshot
let server: RunTestServer

before(async () => {
  baseline = snapshotLeaks()
  server = await startRunServer({ run: { poolMin: 1, poolMax: 2 } })
})

after(async () => {
  await server?.close()
  await assertNoLeaks(baseline, { scope: [server.dataDir, testCgroupParent] })
})

async function execute(json: Record<string, unknown>): Promise<PistonResult> {
  const answer = await server.call('POST', '/api/v2/execute', { json })
  assert.equal(answer.status, 200, answer.text)
  return answer.body as PistonResult
}

async function refused(json: unknown, status: number): Promise<string> {
  const answer = await server.call('POST', '/api/v2/execute', { json })
  assert.equal(answer.status, status, answer.text)
  return (answer.body as { message: string }).message
}

const python = (content: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({
  language: 'python',
  version: '*',
  files: [{ content }],
  ...more,
})

describe('bad input', { timeout: 180_000 }, () => {
  it('rejects unknown languages and versions in both APIs', async () => {
    assert.equal(
      await refused(python('', { language: 'brainfuck' }), 400),
      'brainfuck-* runtime is unknown',
    )
    assert.equal(
      await refused(python('', { version: '2.7' }), 400),
      'python-2.7 runtime is unknown',
    )
    assert.equal(
      await refused(python('', { version: 'not a range' }), 400),
      'python-not a range runtime is unknown',
    )
    const lambdo = await server.call('POST', '/run', {
      json: {
        language: 'python',
        version: '2',
        input: '',
        code: [{ filename: 'a.py', content: '' }],
      },
    })
    assert.equal(lambdo.status, 400)
    assert.equal((lambdo.body as { message: string }).message, 'python-2 runtime is unknown')
  })

  it('rejects no files and too many bytes, runs an empty file', async () => {
    // Piston's own check comes first: no file at all is no utf8 file.
    assert.equal(
      await refused(python('', { files: [] }), 400),
      'files must include at least one utf8 encoded file',
    )
    const lambdoNone = await server.call('POST', '/run', {
      json: { language: 'python', version: '*', input: '', code: [] },
    })
    assert.equal(
      (lambdoNone.body as { message: string }).message,
      'code must hold at least one file',
    )
    const huge = 'x'.repeat(4 * 1024 * 1024 + 1)
    assert.equal(
      await refused(python(huge), 400),
      'files cannot exceed the configured limit of 4194304 bytes in total',
    )
    const tooLarge = await server.call('POST', '/api/v2/execute', {
      json: python('x'.repeat(8 * 1024 * 1024)),
    })
    assert.equal(tooLarge.status, 413)
    assert.match(
      (tooLarge.body as { message: string }).message,
      /^request body is larger than the limit of \d+ bytes$/,
    )
    const empty = await execute(python(''))
    assert.deepEqual([empty.run.stdout, empty.run.code], ['', 0])
  })

  it('rejects names that leave the run directory, keeps subdirectories', async () => {
    for (const [name, message] of [
      ['../x.py', 'files[1].name "../x.py" leaves the run directory (..)'],
      ['a/../../x.py', 'files[1].name "a/../../x.py" leaves the run directory (..)'],
      [
        '/etc/passwd',
        'files[1].name "/etc/passwd" is an absolute path; give a path relative to the run directory',
      ],
      ['a\u0000b', 'files[1].name "a\\u0000b" contains a control character'],
    ]) {
      const files = [{ content: 'print(1)' }, { name, content: 'x' }]
      assert.equal(await refused(python('', { files }), 400), message, name)
    }
    const nested = await execute(
      python('', {
        files: [
          { name: 'main.py', content: 'from pkg import util\nprint(util.VALUE)' },
          { name: 'pkg/__init__.py', content: '' },
          { name: 'pkg/util.py', content: 'VALUE = 42' },
        ],
      }),
    )
    assert.equal(nested.run.stdout, '42\n')
  })

  it('writes binary files (base64, hex) byte for byte and survives binary output', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
    const digest = createHash('sha256').update(bytes).digest('hex')
    const reader =
      'import hashlib\nfor name in ["a.bin", "b.bin"]:\n    print(hashlib.sha256(open(name, "rb").read()).hexdigest())\n'
    const result = await execute(
      python('', {
        files: [
          { name: 'main.py', content: reader },
          { name: 'a.bin', content: bytes.toString('base64'), encoding: 'base64' },
          { name: 'b.bin', content: bytes.toString('hex'), encoding: 'hex' },
        ],
      }),
    )
    assert.equal(result.run.stdout, `${digest}\n${digest}\n`)
    const noisy = await execute(python('import sys\nsys.stdout.buffer.write(bytes(range(256)))'))
    assert.equal(noisy.run.code, 0)
    assert.ok(
      noisy.run.stdout.includes('\ufffd'),
      'invalid UTF-8 arrives as replacement characters',
    )
    assert.equal(
      await refused(
        python('', {
          files: [{ content: 'print(1)' }, { name: 'x', content: '%%', encoding: 'base64' }],
        }),
        400,
      ),
      'files[1].content is not valid base64',
    )
  })

  it('kills an infinite loop at its timeout and says so, in both APIs', async () => {
    const result = await execute(python('while True: pass', { run_timeout: 1000 }))
    assert.equal(result.run.code, null)
    assert.equal(result.run.signal, 'SIGKILL')
    assert.equal(result.run.status, 'TO')
    assert.equal(result.run.message, 'Time limit exceeded (1000 ms wall clock)')
    assert.ok(
      result.run.wall_time >= 1000 && result.run.wall_time < 5000,
      String(result.run.wall_time),
    )
    const lambdo = await server.call('POST', '/run', {
      json: {
        language: 'python',
        version: '*',
        input: '',
        code: [{ filename: 'a.py', content: 'print("started", flush=True)\nwhile True: pass' }],
      },
    })
    assert.deepEqual(lambdo.body, { status: 128, stdout: 'started\n', stderr: 'Timeout' })
  })

  it('contains a fork bomb while another run goes on unharmed', async () => {
    const [bomb, shellBomb, neighbour] = await Promise.all([
      execute(python(examples.testsForkBomb ?? '', { run_timeout: 2000 })),
      execute({
        language: 'bash',
        version: '*',
        files: [{ content: 'f() { f | f; }; f' }],
        run_timeout: 2000,
      }),
      execute(python('import time\ntime.sleep(0.5)\nprint("unharmed")')),
    ])
    for (const result of [bomb, shellBomb]) {
      assert.equal(result.run.signal, 'SIGKILL', JSON.stringify(result.run))
      assert.equal(result.run.status, 'TO')
    }
    assert.equal(neighbour.run.stdout, 'unharmed\n')
    const after = await execute(python('print("still serving")'))
    assert.equal(after.run.stdout, 'still serving\n')
  })

  it('kills a memory hog at its memory limit', async () => {
    const result = await execute(
      python('x = bytearray(512 * 1024 * 1024)\nprint("allocated")', {
        run_memory_limit: 64 * 1024 * 1024,
      }),
    )
    assert.equal(result.run.stdout, '')
    assert.equal(result.run.signal, 'SIGKILL', JSON.stringify(result.run))
    assert.equal(result.run.status, 'SG')
    assert.equal(result.run.message, 'Out of memory (limit 64 MiB)')
  })

  it('cannot reach any network from a one-shot run: loopback only', async () => {
    const result = await execute(
      python(
        [
          'import socket',
          'print(sorted(name for _, name in socket.if_nameindex()))',
          'try:',
          '    socket.create_connection(("203.0.113.10", 80), timeout=2)',
          '    print("connected")',
          'except OSError as err:',
          '    print(type(err).__name__)',
        ].join('\n'),
      ),
    )
    assert.equal(result.run.stdout, "['lo']\nOSError\n", JSON.stringify(result.run))
  })

  it('caps an output flood at 65536 characters per stream and reports it', async () => {
    const flood = await execute(python(examples.testsRunawayOutput ?? ''))
    assert.equal(flood.run.stdout.length, 65_536)
    assert.ok(flood.run.stdout.startsWith('the sandbox holds\n'))
    assert.equal(flood.run.status, 'OL')
    assert.equal(flood.run.signal, 'SIGKILL')
    assert.equal(flood.run.code, null)
    assert.equal(flood.run.message, 'stdout length exceeded (limit 65536 characters)')
    const errors = await execute(python('import sys\nwhile True: sys.stderr.write("e" * 4096)'))
    assert.equal(errors.run.stderr.length, 65_536)
    assert.equal(errors.run.status, 'EL')
    const lambdo = await server.call('POST', '/run', {
      json: {
        language: 'python',
        version: '*',
        input: '',
        code: [{ filename: 'a.py', content: examples.testsRunawayOutput }],
      },
    })
    const body = lambdo.body as { status: number; stdout: string; stderr: string }
    assert.equal(body.status, 137)
    assert.equal(body.stdout.length, 65_536)
    assert.equal(body.stderr, 'sandcell: stdout length exceeded (limit 65536 characters)')
  })

  it('shows a compile error in the compile stage and skips the run stage', async () => {
    const result = await execute({
      language: 'c',
      version: '*',
      files: [{ name: 'prog.c', content: 'int main() { return nope; }' }],
    })
    assert.equal(result.compile?.code, 1)
    assert.equal(result.compile?.status, 'RE')
    assert.match(result.compile?.stderr ?? '', /prog\.c:1:21: error: 'nope' undeclared/)
    assert.deepEqual(result.run, result.compile, 'Piston reports the compile stage as run too')
    const lambdo = await server.call('POST', '/run', {
      json: {
        language: 'C',
        version: '12',
        input: '',
        code: [{ filename: 'prog.c', content: 'int main() { return nope; }' }],
      },
    })
    const body = lambdo.body as { status: number; stdout: string; stderr: string }
    assert.equal(body.status, 1)
    assert.match(body.stderr, /error: 'nope' undeclared/)
  })
})

describe('isolation between runs', { timeout: 60_000 }, () => {
  it('shows no file and no process an earlier run left behind', async () => {
    const first = await execute(
      python(examples.testsFilePersistence ?? '', {
        files: [
          { content: examples.testsFilePersistence },
          { name: 'starter.sh', content: 'nohup sleep 600 >/dev/null 2>&1 &\n' },
        ],
      }),
    )
    assert.equal(first.run.stdout, '', 'a fresh sandbox has no marker')
    const background = await execute({
      language: 'bash',
      version: '*',
      files: [{ content: 'nohup sleep 600 >/dev/null 2>&1 &\necho started' }],
    })
    assert.equal(background.run.stdout, 'started\n')
    const second = await execute(python(examples.testsFilePersistence ?? ''))
    assert.equal(second.run.stdout, '', 'markers of the first run are not visible')
    const processes = await execute({
      language: 'bash',
      version: '*',
      files: [{ content: 'pgrep -a sleep || echo none\nls /home/user/code' }],
    })
    assert.equal(processes.run.stdout, 'none\nmain.sh\n')
  })
})

describe('queueing', { timeout: 120_000 }, () => {
  it('answers 429 with Retry-After beyond the concurrency limit and queue, the rest succeed', async () => {
    const small = await startRunServer({
      run: { maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 2000, poolMin: 1, poolMax: 2 },
    })
    try {
      const request = python('import time\ntime.sleep(0.3)\nprint("done")')
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => small.call('POST', '/api/v2/execute', { json: request })),
      )
      const ok = answers.filter((a) => a.status === 200)
      const busy = answers.filter((a) => a.status === 429)
      assert.equal(ok.length + busy.length, answers.length, answers.map((a) => a.text).join('\n'))
      assert.ok(
        ok.length >= 1 && ok.length <= 2,
        `1 running + up to 1 queued succeed, got ${ok.length}`,
      )
      assert.ok(busy.length >= 6)
      for (const answer of ok) {
        assert.equal((answer.body as PistonResult).run.stdout, 'done\n')
      }
      for (const answer of busy) {
        assert.match(answer.headers.get('retry-after') ?? '', /^[1-9]\d*$/)
        assert.match((answer.body as { message: string }).message, /^too many runs at once/)
      }
      const later = await small.call('POST', '/api/v2/execute', { json: request })
      assert.equal(later.status, 200, 'the server serves again once the burst is over')
      // The last run's slot is held until its sandbox is destroyed, just after the answer.
      await waitFor('every run slot free', async () => {
        const health = (await small.call('GET', '/health')).body as {
          runs: { running: number; waiting: number }
        }
        return health.runs.running === 0 && health.runs.waiting === 0
      })
    } finally {
      await small.close()
    }
  })
})
