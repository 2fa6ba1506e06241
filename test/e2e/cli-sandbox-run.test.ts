/** `sandcell sandbox run` end to end: the real CLI process, real sandboxes, real exit codes. */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  runCli,
  snapshotLeaks,
  testTemplatesDir,
  type CliResult,
  type LeakSnapshot,
  type RunCliOptions,
} from '@sandcell/test-utils'

const cli = new URL('../../packages/cli/src/cli.ts', import.meta.url).pathname
let baseline: LeakSnapshot
let dataDir: string

/** Runs `sandcell ARGS` with local sandboxes in the test's data dir and cgroup. */
function sandcell(
  args: string[],
  options: Pick<RunCliOptions, 'stdin' | 'timeoutMs'> = {},
): Promise<CliResult> {
  return runCli(args, {
    ...options,
    env: {
      SANDCELL_DATA_DIR: dataDir,
      SANDCELL_TEMPLATES_DIR: testTemplatesDir,
      SANDCELL_CGROUP_PARENT: `sandcell-test-${process.pid}`,
    },
  })
}

/** Whether a host process runs `command` (its argv[0] may be the resolved path). */
function hostRuns(command: string): boolean {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .some((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()
        return cmdline === command || cmdline.endsWith(`/${command}`)
      } catch {
        return false
      }
    })
}

function sandboxDirs(): string[] {
  try {
    return readdirSync(join(dataDir, 'sandboxes'))
  } catch {
    return []
  }
}

before(() => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-cli-'))
})

after(async () => {
  rmSync(dataDir, { recursive: true, force: true })
  await assertNoLeaks(baseline)
})

describe('sandcell sandbox run', () => {
  it("streams output and exits with the command's code", async () => {
    const result = await sandcell([
      'sandbox',
      'run',
      '--',
      '/bin/sh',
      '-c',
      'echo out; echo err >&2; exit 7',
    ])
    assert.equal(result.stdout, 'out\n')
    assert.equal(result.stderr, 'err\n')
    assert.equal(result.code, 7)
  })

  it('forwards stdin and passes env, cwd and user', async () => {
    const result = await sandcell(
      [
        'sandbox',
        'run',
        '--env',
        'A=1',
        '-e',
        'B=two words',
        '--cwd',
        '/tmp',
        '--user',
        'root',
        '--',
        '/bin/sh',
        '-c',
        'read line; echo "$line|$A|$B|$(pwd)|$(id -u)"',
      ],
      { stdin: 'hello\n' },
    )
    assert.equal(result.stdout, 'hello|1|two words|/tmp|0\n')
    assert.equal(result.code, 0)
  })

  it('exits 137 with a one-line reason when the memory limit kills the command', async () => {
    const result = await sandcell([
      'sandbox',
      'run',
      '--memory-mb',
      '96',
      '--',
      '/bin/sh',
      '-c',
      'x=abcdefghijklmnopqrstuvwxyz0123456789; while :; do x="$x$x"; done',
    ])
    assert.equal(result.code, 137)
    assert.match(result.stderr, /killed: out of memory \(limit 96 MiB\)/)
  })

  it('exits 137 and says so when the timeout kills the command', async () => {
    const result = await sandcell(['sandbox', 'run', '--timeout-ms', '500', '--', 'sleep', '30'])
    assert.equal(result.code, 137)
    assert.match(result.stderr, /timed out after 500 ms/)
  })

  it('exits 128 + signal when the command is killed by a signal', async () => {
    const result = await sandcell(['sandbox', 'run', '--', '/bin/sh', '-c', 'kill -TERM $$'])
    assert.equal(result.code, 143)
    assert.match(result.stderr, /SIGTERM/)
  })

  it('exits 127 for a command that does not exist', async () => {
    const result = await sandcell(['sandbox', 'run', '--', 'no-such-program'])
    assert.equal(result.code, 127)
    assert.match(result.stderr, /no-such-program: command not found/)
  })

  it('rejects an unknown template and impossible limits with a clear message, exit 125', async () => {
    const unknown = await sandcell(['sandbox', 'run', '--template', 'nope', '--', 'true'])
    assert.equal(unknown.code, 125)
    assert.match(unknown.stderr, /template "nope" does not exist; known: base, debian/)
    const limits = await sandcell(['sandbox', 'run', '--memory-mb', '1', '--', 'true'])
    assert.equal(limits.code, 125)
    assert.match(limits.stderr, /memoryMiB must be between 64/)
    const flag = await sandcell(['sandbox', 'run', '--cpus', 'lots', '--', 'true'])
    assert.notEqual(flag.code, 0)
    assert.match(flag.stderr, /--cpus must be a positive number/)
  })

  it('runs on the debian template with its own toolchain', async () => {
    const result = await sandcell([
      'sandbox',
      'run',
      '--template',
      'debian',
      '--',
      'python3',
      '-c',
      'print(6*7)',
    ])
    assert.equal(result.stdout, '42\n')
    assert.equal(result.code, 0)
  })

  it('leaves no sandbox behind and cleans up after a CLI killed hard', async () => {
    const killed = spawn(
      process.execPath,
      [
        '--conditions=sandcell-source',
        '--import',
        'tsx',
        cli,
        'sandbox',
        'run',
        '--',
        'sleep',
        '60',
      ],
      {
        env: {
          ...process.env,
          SANDCELL_DATA_DIR: dataDir,
          SANDCELL_TEMPLATES_DIR: testTemplatesDir,
          SANDCELL_CGROUP_PARENT: `sandcell-test-${process.pid}`,
        },
        stdio: 'ignore',
      },
    )
    // Wait until its command runs in a sandbox, then kill the CLI without letting it clean up.
    const deadline = Date.now() + 30_000
    while (!hostRuns('sleep 60') && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    assert.equal(hostRuns('sleep 60'), true, 'the sandboxed command started')
    killed.kill('SIGKILL')
    await new Promise((resolve) => killed.once('close', resolve))
    assert.equal(sandboxDirs().length, 1, 'the orphan is still there')
    // The next CLI run finds the orphan (its owner is dead) and removes it.
    const next = await sandcell(['sandbox', 'run', '--', 'true'])
    assert.equal(next.code, 0)
    assert.equal(hostRuns('sleep 60'), false)
    assert.deepEqual(sandboxDirs(), [])
  })
})
