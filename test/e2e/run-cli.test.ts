/**
 * `sandcell run` and `sandcell languages` as a person or script uses them: through a real
 * server in this process, and `--local` on the runtime directly, with the program's exit code.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  testCgroupParent,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'
import { startRunServer, type RunTestServer } from './run-server.js'

const cli = new URL('../../packages/cli/src/cli.ts', import.meta.url).pathname
let baseline: LeakSnapshot
let server: RunTestServer
let workDir: string
let localDataDir: string

before(async () => {
  baseline = snapshotLeaks()
  workDir = mkdtempSync(join(tmpdir(), 'sandcell-run-cli-'))
  localDataDir = mkdtempSync(join(tmpdir(), 'sandcell-run-local-'))
  server = await startRunServer({ run: { poolMin: 1, poolMax: 2 } })
})

after(async () => {
  await server?.close()
  rmSync(workDir, { recursive: true, force: true })
  rmSync(localDataDir, { recursive: true, force: true })
  await assertNoLeaks(baseline, { scope: [server.dataDir, localDataDir, testCgroupParent] })
})

interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

function sandcell(args: string[], stdin = ''): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--conditions=sandcell-source', '--import', 'tsx', cli, ...args],
      {
        env: {
          ...process.env,
          NODE_EXTRA_CA_CERTS: '',
          SANDCELL_SERVER_URL: server.url,
          SANDCELL_DATA_DIR: localDataDir,
          SANDCELL_TEMPLATES_DIR: testTemplatesDir,
          SANDCELL_CGROUP_PARENT: testCgroupParent,
        },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    )
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
    child.stdin.end(stdin)
  })
}

describe('sandcell run through a server', { timeout: 120_000 }, () => {
  it("runs a file with args and stdin, and exits with the program's code", async () => {
    const file = join(workDir, 'greet.py')
    writeFileSync(file, 'import sys\nprint("hi", input(), sys.argv[1:])\nsys.exit(4)\n')
    const result = await sandcell(['run', 'python', file, '--', 'a', '--flag'], 'you\n')
    assert.equal(result.stdout, "hi you ['a', '--flag']\n", result.stderr)
    assert.equal(result.code, 4)
  })

  it('reads the code from stdin when FILE is - or absent', async () => {
    const dash = await sandcell(['run', 'bash', '-', '--', 'x'], 'echo "$1 from stdin"')
    assert.equal(dash.stdout, 'x from stdin\n', dash.stderr)
    const absent = await sandcell(
      ['run', 'c'],
      '#include <stdio.h>\nint main(){puts("c");return 7;}',
    )
    assert.equal(absent.stdout, 'c\n', absent.stderr)
    assert.equal(absent.code, 7)
    const argsOnly = await sandcell(['run', 'sh', '--', 'one', 'two'], 'echo "$#:$*"')
    assert.equal(argsOnly.stdout, '2:one two\n', argsOnly.stderr)
  })

  it('prints compile errors on stderr and exits with the compiler’s code', async () => {
    const result = await sandcell(['run', 'c++'], 'int main() { return nope; }')
    assert.equal(result.stdout, '')
    assert.match(result.stderr, /error: 'nope' was not declared/)
    assert.match(result.stderr, /sandcell: compilation failed: Exited with error status 1\n$/)
    assert.equal(result.code, 1)
  })

  it('says why a program was killed and exits 128 + 9', async () => {
    const result = await sandcell(['run', 'python', '--timeout-ms', '500'], 'while True: pass')
    assert.equal(result.code, 137)
    assert.match(result.stderr, /sandcell: Time limit exceeded \(500 ms wall clock\)\n$/)
  })

  it('exits 125 with the reason for an unknown language', async () => {
    const result = await sandcell(['run', 'cobol'], 'x')
    assert.equal(result.code, 125)
    assert.match(result.stderr, /^sandcell: cobol-\* runtime is unknown\n$/)
  })

  it('lists the languages as a table and as JSON', async () => {
    const table = await sandcell(['languages'])
    assert.equal(table.code, 0, table.stderr)
    const lines = table.stdout.trimEnd().split('\n')
    assert.match(lines[0] ?? '', /^LANGUAGE +VERSION +TEMPLATE +ALIASES +STATUS$/)
    assert.match(lines[1] ?? '', /^python +3\.\d+\.\d+ +debian +py,py3,python3 +available$/)
    assert.equal(lines.length, 6)
    const json = JSON.parse((await sandcell(['languages', '--json'])).stdout) as {
      language: string
      available: boolean
    }[]
    assert.deepEqual(
      json.map((l) => [l.language, l.available]),
      [
        ['python', true],
        ['javascript', true],
        ['bash', true],
        ['c', true],
        ['c++', true],
      ],
    )
  })
})

describe('sandcell run --local', { timeout: 120_000 }, () => {
  it('runs without a server, with the same answers', async () => {
    const result = await sandcell(
      ['run', 'python', '--local', '--', 'arg'],
      'import sys\nprint(sys.argv[1], repr(input()))',
    )
    assert.equal(result.stdout, "arg ''\n", result.stderr)
    assert.equal(result.code, 0)
    const compiled = await sandcell(['run', 'c', '--local'], 'int main(){return 3;}')
    assert.equal(compiled.code, 3, compiled.stderr)
  })

  it('prints the same JSON as through a server, a failed compile stage as the run stage too', async () => {
    /** The answer without what differs from run to run (times, memory). */
    const stable = (text: string): unknown =>
      JSON.parse(text, (key, value: unknown) =>
        ['cpuTimeMs', 'wallTimeMs', 'memoryBytes'].includes(key) ? typeof value : value,
      )
    const answers: unknown[] = []
    for (const [language, code, exit] of [
      ['python', 'print("hi")', 0],
      ['c', 'int main() { return nope; }', 1],
    ] as const) {
      const remote = await sandcell(['run', language, '--json'], code)
      const local = await sandcell(['run', language, '--json', '--local'], code)
      assert.equal(remote.code, exit, remote.stderr)
      assert.equal(local.code, exit, local.stderr)
      assert.deepEqual(stable(local.stdout), stable(remote.stdout))
      answers.push(stable(local.stdout))
    }
    const failed = answers[1] as { compile: { status: string }; run: unknown }
    assert.equal(failed.compile.status, 'RE')
    assert.deepEqual(failed.run, failed.compile)
  })

  it('lists languages by probing the local templates', async () => {
    const result = await sandcell(['languages', '--local', '--json'])
    assert.equal(result.code, 0, result.stderr)
    const languages = JSON.parse(result.stdout) as {
      language: string
      template: string
      available: boolean
    }[]
    assert.ok(languages.every((l) => l.available && l.template === 'debian'))
  })
})
