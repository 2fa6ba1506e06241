/**
 * The sandbox commands end to end: a real server in this process (port 0, temp data dir, real
 * sandboxes) and the real CLI as child processes talking to it, as a person or script would.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { loadServerConfig, startServer, type StartedServer } from '@sandcell/server'
import {
  assertNoLeaks,
  createTestLogger,
  runCli,
  snapshotLeaks,
  testTemplatesDir,
  type CliResult,
  type LeakSnapshot,
  type RunCliOptions,
} from '@sandcell/test-utils'

const cli = new URL('../../packages/cli/src/cli.ts', import.meta.url).pathname
const apiKey = 'sc_test_cli_0123456789abcdefghijkl'
const log = createTestLogger()
let baseline: LeakSnapshot
let dataDir: string
let server: StartedServer

/** Runs the CLI against the test server (or what `env` says instead) to its end. */
function sandcell(args: string[], options: RunCliOptions = {}): Promise<CliResult> {
  return runCli(args, {
    ...options,
    env: { SANDCELL_SERVER_URL: server.url, SANDCELL_API_KEY: apiKey, ...options.env },
  })
}

/** Runs `sh -c command` on a terminal of its own (util-linux `script`), typing `input` into it. */
function runScript(command: string, input: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', command, '/dev/null'], {
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: '',
        SANDCELL_SERVER_URL: server.url,
        SANDCELL_API_KEY: apiKey,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
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
    child.stdin.write(input)
  })
}

/** Like `sandcell`, but a failure shows everything the CLI said. */
async function ok(args: string[], options: Parameters<typeof sandcell>[1] = {}): Promise<string> {
  const result = await sandcell(args, options)
  assert.equal(result.code, 0, `sandcell ${args.join(' ')} failed:\n${result.stderr}`)
  return result.stdout
}

function json<T>(text: string): T {
  return JSON.parse(text) as T
}

interface SandboxJson {
  sandboxId: string
  templateId: string
  state: string
  startedAt: string
  endAt: string
  metadata: Record<string, string>
  envdAccessToken?: string
}

/** A port nothing listens on: bound, read, released. */
async function freePort(): Promise<number> {
  const probe = createServer()
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
  const address = probe.address()
  await new Promise((resolve) => probe.close(resolve))
  assert.ok(address !== null && typeof address === 'object')
  return address.port
}

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-cli-server-'))
  const config = loadServerConfig({
    env: {},
    flags: {
      port: 0,
      dataDir,
      templatesDir: testTemplatesDir,
      cgroupParent: `sandcell-test-${process.pid}`,
      apiKeys: [apiKey],
      warmPool: {},
      killSandboxesOnExit: true,
      logLevel: 'debug',
    },
  })
  server = await startServer({ config, log })
})

after(async () => {
  await server.close({ killSandboxes: true })
  rmSync(dataDir, { recursive: true, force: true })
  await assertNoLeaks(baseline)
})

describe('sandcell sandbox commands against a server', () => {
  it('creates, lists, gets, pauses, resumes and kills a sandbox', async (t) => {
    const run = `run${process.pid}${Date.now()}`
    const id = (
      await ok([
        'sandbox',
        'create',
        '--timeout',
        '120',
        '--metadata',
        `run=${run}`,
        '--metadata',
        'n=1',
      ])
    ).trim()
    t.after(() => sandcell(['sandbox', 'kill', id]))
    assert.match(id, /^[a-z0-9]{20}$/)
    const second = json<SandboxJson>(
      await ok(['sandbox', 'create', '--metadata', `run=${run}`, '--metadata', 'n=2', '--json']),
    )
    t.after(() => sandcell(['sandbox', 'kill', second.sandboxId]))
    assert.equal(second.state, 'running')
    assert.deepEqual(second.metadata, { run, n: '2' })
    assert.equal(second.envdAccessToken, undefined, 'secrets stay out of the output')

    const listed = json<SandboxJson[]>(
      await ok(['sandbox', 'list', '--metadata', `run=${run}`, '--json']),
    )
    assert.deepEqual(listed.map((s) => s.sandboxId).sort(), [id, second.sandboxId].sort())
    const one = json<SandboxJson[]>(
      await ok(['sandbox', 'list', '--metadata', `run=${run}`, '--metadata', 'n=1', '--json']),
    )
    assert.deepEqual(
      one.map((s) => s.sandboxId),
      [id],
    )
    const table = await ok(['sandbox', 'list', '--metadata', `run=${run}`])
    const lines = table.trimEnd().split('\n')
    assert.match(
      lines[0] ?? '',
      /^SANDBOX ID +TEMPLATE +STATE +STARTED +ENDS IN +CPU +MEMORY +METADATA$/,
    )
    assert.equal(lines.length, 3)
    const row = lines.find((line) => line.startsWith(id)) ?? ''
    assert.match(
      row,
      new RegExp(`^${id} +base +running +.+ago +\\S+ +1 +\\d+ MiB +run=${run},n=1$`),
    )

    const detail = json<SandboxJson>(await ok(['sandbox', 'get', id, '--json']))
    assert.equal(detail.sandboxId, id)
    const lifetimeMs = Date.parse(detail.endAt) - Date.parse(detail.startedAt)
    assert.ok(
      Math.abs(lifetimeMs - 120_000) < 5_000,
      `--timeout 120 gives ~120 s, got ${lifetimeMs} ms`,
    )
    const human = await ok(['sandbox', 'get', id])
    assert.match(human, new RegExp(`^sandbox id +${id}\\ntemplate +base\\n`))
    assert.match(human, /\nstate +running\n/)
    assert.match(human, /\nends +\S+ \(in \d+m\d*s?\)\n/)

    assert.equal(await ok(['sandbox', 'pause', id]), `paused ${id}\n`)
    const paused = json<SandboxJson[]>(
      await ok(['sandbox', 'list', '--state', 'paused', '--metadata', `run=${run}`, '--json']),
    )
    assert.deepEqual(
      paused.map((s) => s.sandboxId),
      [id],
    )
    const execPaused = await sandcell(['sandbox', 'exec', id, '--', 'true'])
    assert.equal(execPaused.code, 125)
    assert.equal(
      execPaused.stderr,
      `sandcell: sandbox ${id} is paused; resume it with: sandcell sandbox resume ${id}\n`,
    )
    const pauseAgain = await sandcell(['sandbox', 'pause', id])
    assert.equal(pauseAgain.code, 125)
    assert.match(pauseAgain.stderr, /^sandcell: .*paused/)

    assert.match(
      await ok(['sandbox', 'resume', id, '--timeout', '60']),
      new RegExp(`^resumed ${id} \\(ends in \\S+\\)\\n$`),
    )
    const again = json<SandboxJson & { resumed: boolean }>(
      await ok(['sandbox', 'resume', id, '--json']),
    )
    assert.equal(again.resumed, false)
    assert.equal(again.state, 'running')

    const killed = json<{ sandboxId: string; killed: boolean; error?: string }[]>(
      await ok(['sandbox', 'kill', id, second.sandboxId, '--json']),
    )
    assert.deepEqual(killed, [
      { sandboxId: id, killed: true },
      { sandboxId: second.sandboxId, killed: true },
    ])
    const gone = await sandcell(['sandbox', 'get', id])
    assert.equal(gone.code, 125)
    assert.equal(gone.stdout, '')
    assert.equal(gone.stderr, `sandcell: sandbox ${id} does not exist or was killed\n`)
    const killAgain = await sandcell(['sandbox', 'kill', id])
    assert.equal(killAgain.code, 125)
    assert.equal(killAgain.stderr, `sandcell: sandbox ${id} does not exist or was killed\n`)
  })

  describe('exec and shell', () => {
    let id: string
    before(async () => {
      id = (await ok(['sandbox', 'create', '--env', 'FROM_CREATE=yes'])).trim()
    })
    after(async () => {
      await sandcell(['sandbox', 'kill', id])
    })

    it("streams output and exits with the command's code", async () => {
      const result = await sandcell([
        'sandbox',
        'exec',
        id,
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
          'exec',
          id,
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
          'read line; echo "$line|$A|$B|$FROM_CREATE|$(pwd)|$(id -u)"',
        ],
        { stdin: 'hello\n' },
      )
      assert.equal(result.stderr, '')
      assert.equal(result.stdout, 'hello|1|two words|yes|/tmp|0\n')
      assert.equal(result.code, 0)
      assert.equal(await ok(['sandbox', 'exec', id, '--', 'id', '-un']), 'user\n')
    })

    it('exits 137 and says so when --timeout-ms kills the command', async () => {
      const result = await sandcell([
        'sandbox',
        'exec',
        id,
        '--timeout-ms',
        '500',
        '--',
        'sleep',
        '30',
      ])
      assert.equal(result.code, 137)
      assert.match(result.stderr, /sandcell: sleep killed: timed out after 500 ms/)
    })

    it('exits 128 + signal and 127 for a command that does not exist', async () => {
      const signalled = await sandcell([
        'sandbox',
        'exec',
        id,
        '--',
        '/bin/sh',
        '-c',
        'kill -TERM $$',
      ])
      assert.equal(signalled.code, 143)
      assert.match(signalled.stderr, /SIGTERM \(signal 15\)/)
      const missing = await sandcell(['sandbox', 'exec', id, '--', 'no-such-program'])
      assert.equal(missing.code, 127)
      assert.match(missing.stderr, /no-such-program: command not found/)
    })

    it('runs piped input through a login shell as a script', async () => {
      const result = await sandcell(['sandbox', 'shell', id], {
        stdin: 'echo "tty:$(tty) user:$(id -un) sum:$((6*7))"\necho err >&2\nexit 3\n',
      })
      assert.equal(result.stdout, 'tty:not a tty user:user sum:42\n')
      assert.equal(result.stderr, 'err\n')
      assert.equal(result.code, 3)
      const root = await sandcell(['sandbox', 'shell', id, '--user', 'root'], {
        stdin: 'id -un\n',
      })
      assert.equal(root.stdout, 'root\n')
      assert.equal(root.code, 0)
    })

    it('runs an interactive shell on a terminal that follows resizes and is restored', async () => {
      // `script` gives the CLI a terminal (40x100); once the CLI has made it raw, a helper
      // resizes it to 50x120, which the shell in the sandbox must see through the Update RPC.
      // (A background job's stdin is /dev/null, hence its explicit /dev/tty.)
      const command = [process.execPath, '--conditions=sandcell-source', '--import', 'tsx', cli]
        .concat(['sandbox', 'shell', id])
        .map((word) => `'${word}'`)
        .join(' ')
      const resizeWhenRaw =
        "(while stty -a | grep -q ' icanon'; do sleep 0.1; done; sleep 3; stty rows 50 cols 120) </dev/tty &"
      const afterExit = 'code=$?; stty -a | grep -o " icanon" ; exit $code'
      const result = await runScript(
        `stty rows 40 cols 100; ${resizeWhenRaw} ${command}; ${afterExit}`,
        'echo "tty:$(tty)"; stty size; while [ "$(stty size)" = "40 100" ]; do sleep 0.1; done; stty size; exit 3\n',
      )
      assert.equal(result.code, 3, result.stdout)
      assert.match(result.stdout, /tty:\/dev\/pts\/\d+/)
      const before = result.stdout.search(/\n40 100\r*\n/)
      const after = result.stdout.search(/\n50 120\r*\n/)
      assert.ok(before !== -1 && after > before, `40x100, then 50x120:\n${result.stdout}`)
      assert.match(result.stdout, / icanon\s*$/, 'the terminal is back in canonical mode')
    })
  })

  it('exits 125 with an unauthorized message for a wrong API key', async () => {
    const wrong = await sandcell(['sandbox', 'list'], {
      env: { SANDCELL_API_KEY: 'sc_wrong_0000000000000000000000' },
    })
    assert.equal(wrong.code, 125)
    assert.equal(wrong.stdout, '')
    assert.match(
      wrong.stderr,
      new RegExp(
        `^sandcell: unauthorized \\(401\\) by ${server.url}: .+; check the key given by SANDCELL_API_KEY or --api-key\\n$`,
      ),
    )
    const flag = await sandcell([
      'sandbox',
      'get',
      'abc',
      '--api-key',
      'sc_wrong_0000000000000000000000',
    ])
    assert.equal(flag.code, 125)
    assert.match(flag.stderr, /unauthorized \(401\)/)
  })

  it('exits 125 naming the URL when the server is down', async () => {
    const url = `http://127.0.0.1:${await freePort()}`
    for (const args of [
      ['sandbox', 'list'],
      ['sandbox', 'create', '--json'],
      ['sandbox', 'exec', 'abc', '--', 'true'],
    ]) {
      const down = await sandcell(args, { env: { SANDCELL_SERVER_URL: url } })
      assert.equal(down.code, 125, args.join(' '))
      assert.equal(down.stdout, '')
      assert.match(
        down.stderr,
        new RegExp(
          `^sandcell: cannot reach the sandcell server at ${url} \\(.*ECONNREFUSED.*\\); is the server running\\?`,
        ),
      )
    }
    const flag = await sandcell(['sandbox', 'list', '--server', url])
    assert.equal(flag.code, 125)
    assert.match(flag.stderr, new RegExp(`at ${url} `))
  })

  it('rejects a server URL that is not http(s) before connecting', async () => {
    const bad = await sandcell(['sandbox', 'list'], { env: { SANDCELL_SERVER_URL: 'ftp://x' } })
    assert.equal(bad.code, 125)
    assert.match(bad.stderr, /serverUrl \(SANDCELL_SERVER_URL\): an http:\/\/ or https:\/\/ URL/)
  })
})
