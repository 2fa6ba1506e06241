/**
 * The official e2b SDK's commands and PTYs against a real `sandcell serve`: foreground and
 * background runs, streamed output, stdin, exit errors, kills, timeouts, reconnects, terminals.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify, stripVTControlCharacters } from 'node:util'
import { CommandExitError, Sandbox, TimeoutError, type CommandHandle } from 'e2b'
import {
  assertNoLeaks,
  assertTickerFollows,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  tickerCommand,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

const execFileAsync = promisify(execFile)
/** Where `import 'e2b'` resolves for a program run from here. */
const repoRoot = new URL('../..', import.meta.url).pathname

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess
let sandbox: Sandbox

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
  sandbox = await Sandbox.create({ ...server.connection, envs: { FROM_CREATE: 'created' } })
})

after(async () => {
  try {
    await sandbox?.kill()
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** A command using bash's features on the variables its `envs` give (see {@link scopedEnvs}). */
const bashOnEnvs = [
  'words=($WORDS); echo "${#words[@]} ${words[2]}"',
  'echo "${GREETING:-none} ${MISSING:-fallback} ${EMPTY:-empty}${EMPTY-unset}."',
  'echo "$QUOTED"; echo "$MULTI"',
  `export GREETING="$GREETING!"; bash -c 'echo "child: $GREETING"'`,
  '(GREETING=inner; echo "subshell: $GREETING"); echo "after: $GREETING"',
  'echo "$(echo $WORDS | tr " " ,)"; env | grep -c "^GREETING="',
  'echo "$PATH"',
].join('\n')

const scopedEnvs = {
  WORDS: 'a b c',
  GREETING: 'hello world',
  EMPTY: '',
  QUOTED: `it's "quoted": $HOME \\ \`id\` $(id)`,
  MULTI: 'one\ntwo',
  PATH: '/opt/tools/bin:/usr/bin:/bin',
}

/**
 * Runs {@link bashOnEnvs} with {@link scopedEnvs}: bash sees every value as given (nothing
 * expanded twice, the login profile keeps the PATH), and the next command sees none of them.
 */
async function assertScopedEnvs(sandbox: Sandbox): Promise<void> {
  const result = await sandbox.commands.run(bashOnEnvs, { envs: scopedEnvs })
  assert.equal(
    result.stdout,
    [
      '3 c',
      'hello world fallback empty.',
      scopedEnvs.QUOTED,
      'one',
      'two',
      'child: hello world!',
      'subshell: inner',
      'after: hello world!',
      'a,b,c',
      '1',
      scopedEnvs.PATH,
      '',
    ].join('\n'),
  )
  const next = await sandbox.commands.run('echo "${GREETING-unset} ${WORDS-unset}"')
  assert.equal(next.stdout, 'unset unset\n')
}

/**
 * Commands run in a login shell with a user's environment (root's with `user: 'root'`), and a
 * PTY's shell shows Debian's prompt.
 */
async function assertLoginEnvironment(sandbox: Sandbox): Promise<void> {
  const show = 'shopt -q login_shell && echo login; echo "$HOME $USER $LOGNAME $LANG"; echo "$PATH"'
  const standardPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  const asUser = await sandbox.commands.run(show)
  assert.equal(asUser.stdout, `login\n/home/user user user C.UTF-8\n${standardPath}\n`)
  const asRoot = await sandbox.commands.run(show, { user: 'root' })
  assert.equal(asRoot.stdout, `login\n/root root root C.UTF-8\n${standardPath}\n`)

  const { terminal, output } = await openTerminal(sandbox)
  try {
    // Debian's ~/.bashrc colours the prompt and sets the window title: compare the text.
    await outputMatching(() => stripVTControlCharacters(output()), /user@sandbox:~\$ $/)
  } finally {
    await sandbox.pty.kill(terminal.pid)
  }
}

/** An 80x24 terminal running the SDK's shell, and its output so far as text. */
async function openTerminal(
  sandbox: Sandbox,
): Promise<{ terminal: CommandHandle; output: () => string }> {
  const decoder = new TextDecoder()
  let output = ''
  const terminal = await sandbox.pty.create({
    cols: 80,
    rows: 24,
    onData: (data) => {
      output += decoder.decode(data, { stream: true })
    },
  })
  return { terminal, output: () => output }
}

/** Resolves with the first text `collected()` holds that matches `pattern`. */
async function outputMatching(collected: () => string, pattern: RegExp): Promise<string> {
  await waitFor(`output matching ${pattern}`, () => pattern.test(collected()))
  return collected()
}

describe('commands', { timeout: 60_000 }, () => {
  it('runs a command and returns its stdout, stderr and exit code', async () => {
    const result = await sandbox.commands.run('echo out; echo err >&2')
    assert.equal(result.exitCode, 0)
    assert.equal(result.stdout, 'out\n')
    assert.equal(result.stderr, 'err\n')
  })

  it("runs as the template's user in its home, with the sandbox's and the command's env", async () => {
    const result = await sandbox.commands.run('echo "$(id -un) $(pwd) $FROM_CREATE $FROM_RUN"', {
      envs: { FROM_RUN: 'ran' },
    })
    assert.equal(result.stdout, 'user /home/user created ran\n')
    const asRoot = await sandbox.commands.run('echo "$(id -u) $(pwd)"', {
      user: 'root',
      cwd: '/tmp',
    })
    assert.equal(asRoot.stdout, '0 /tmp\n')
  })

  it('throws CommandExitError with the exit code, stdout and stderr of a failing command', async () => {
    const error = await sandbox.commands.run('echo partial; echo broken >&2; exit 3').then(
      () => assert.fail('the command succeeded'),
      (err: unknown) => err,
    )
    assert.ok(error instanceof CommandExitError, String(error))
    assert.equal(error.exitCode, 3)
    assert.equal(error.stdout, 'partial\n')
    assert.equal(error.stderr, 'broken\n')
  })

  it('streams stdout and stderr to the callbacks while the command still runs', async () => {
    let stdout = ''
    let stderr = ''
    const handle = await sandbox.commands.run(
      'echo first; echo warning >&2; read line; echo "got $line"',
      {
        background: true,
        stdin: true,
        onStdout: (data) => {
          stdout += data
        },
        onStderr: (data) => {
          stderr += data
        },
      },
    )
    // The command blocks on stdin: this output can only have come as it was produced.
    await outputMatching(() => stdout, /^first\n$/)
    await outputMatching(() => stderr, /^warning\n$/)
    assert.equal(handle.exitCode, undefined)
    await handle.sendStdin('hello\n')
    const result = await handle.wait()
    assert.equal(result.stdout, 'first\ngot hello\n')
    assert.equal(stdout, 'first\ngot hello\n')
    assert.equal(stderr, 'warning\n')
  })

  it('runs a command in the background and gives its result through wait()', async () => {
    const handle = await sandbox.commands.run('read go; echo "done $go"', {
      background: true,
      stdin: true,
    })
    assert.ok(handle.pid > 0)
    assert.equal(handle.exitCode, undefined)
    await sandbox.commands.sendStdin(handle.pid, 'now\n')
    const result = await handle.wait()
    assert.deepEqual(
      { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr },
      { exitCode: 0, stdout: 'done now\n', stderr: '' },
    )
    assert.equal(handle.exitCode, 0)
  })

  it('feeds stdin to a command and closes it so the command sees EOF', async () => {
    const handle = await sandbox.commands.run('wc -c', { background: true, stdin: true })
    await handle.sendStdin('abc')
    await handle.sendStdin(new Uint8Array([0x64, 0x65]))
    await handle.closeStdin()
    const result = await handle.wait()
    assert.equal(result.stdout.trim(), '5')
  })

  it('kills a background command: kill() is true, wait() rejects and the process is gone', async () => {
    const handle = await sandbox.commands.run('sleep 60', { background: true })
    assert.ok((await sandbox.commands.list()).some((p) => p.pid === handle.pid))
    assert.equal(await handle.kill(), true)
    const error = await handle.wait().then(
      () => assert.fail('a killed command succeeded'),
      (err: unknown) => err,
    )
    assert.ok(error instanceof CommandExitError, String(error))
    assert.match(error.error ?? '', /killed/)
    await waitFor('the killed command to leave the process list', async () =>
      (await sandbox.commands.list()).every((p) => p.pid !== handle.pid),
    )
    assert.equal(await sandbox.commands.kill(handle.pid), false)
  })

  it("ends a command at its timeoutMs with the SDK's TimeoutError and kills it", async () => {
    const started = Date.now()
    await assert.rejects(
      sandbox.commands.run('sleep 45; echo never', { timeoutMs: 1000 }),
      (err: unknown) => err instanceof TimeoutError,
    )
    const elapsedMs = Date.now() - started
    assert.ok(elapsedMs >= 900 && elapsedMs < 10_000, `took ${elapsedMs} ms`)
    await waitFor('the timed-out command to be killed', async () =>
      (await sandbox.commands.list()).every((p) => !p.args.join(' ').includes('sleep 45')),
    )
  })

  it('ends a background command at its timeoutMs even when no client follows it (as envd)', async () => {
    // The SDK's default timeoutMs is 60 s: a background command meant to outlive it needs 0.
    const handle = await sandbox.commands.run('sleep 45', { background: true, timeoutMs: 1000 })
    const started = Date.now()
    await handle.disconnect()
    await waitFor('the command to end at its deadline', async () =>
      (await sandbox.commands.list()).every((p) => p.pid !== handle.pid),
    )
    const elapsedMs = Date.now() - started
    assert.ok(elapsedMs >= 500 && elapsedMs < 10_000, `took ${elapsedMs} ms`)
  })

  it('lists a running command and reconnects to its output with commands.connect', async () => {
    const command = 'while read line; do echo "echo:$line"; done'
    const first = await sandbox.commands.run(command, { background: true, stdin: true })
    await first.disconnect()
    const listed = (await sandbox.commands.list()).find((p) => p.pid === first.pid)
    assert.ok(listed, `pid ${first.pid} is listed`)
    assert.equal(listed.cmd, '/bin/bash')
    assert.deepEqual(listed.args, ['-l', '-c', command])

    let stdout = ''
    const again = await sandbox.commands.connect(first.pid, {
      onStdout: (data) => {
        stdout += data
      },
    })
    assert.equal(again.pid, first.pid)
    await sandbox.commands.sendStdin(first.pid, 'one\n')
    await outputMatching(() => stdout, /echo:one\n/)
    await sandbox.commands.closeStdin(first.pid)
    const result = await again.wait()
    assert.equal(result.exitCode, 0)
    assert.equal(stdout, 'echo:one\n')
  })

  it('keeps a background command running after the program that started it exits', async (t) => {
    // Another program starts the command and exits without disconnecting, as a script would.
    const started = await execFileAsync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { Sandbox } from 'e2b'
        const sandbox = await Sandbox.connect(process.env.SANDBOX_ID, JSON.parse(process.env.CONNECTION))
        const handle = await sandbox.commands.run(process.env.COMMAND, { background: true, timeoutMs: 0 })
        console.log(handle.pid)
        process.exit(0)`,
      ],
      {
        cwd: repoRoot,
        env: {
          ...process.env,
          SANDBOX_ID: sandbox.sandboxId,
          CONNECTION: JSON.stringify(server.connection),
          COMMAND: tickerCommand,
        },
      },
    )
    const pid = Number(started.stdout.trim())
    assert.ok(pid > 0, started.stdout)
    t.after(() => sandbox.commands.kill(pid))

    await assertTickerFollows(sandbox, pid)
  })

  it("gives a command's envs to bash as they are: arrays, expansions, export, subshells", async () => {
    await assertScopedEnvs(sandbox)
  })

  it("starts commands in a login shell with the user's environment, PTYs with a prompt", async () => {
    await assertLoginEnvironment(sandbox)
  })

  it('returns false when killing a pid that does not exist', async () => {
    assert.equal(await sandbox.commands.kill(999_999), false)
  })

  it('runs 16 commands at once, each with its own output', async () => {
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) => sandbox.commands.run(`echo ${i}; sleep 0.1`)),
    )
    assert.deepEqual(
      results.map((r) => r.stdout),
      Array.from({ length: 16 }, (_, i) => `${i}\n`),
    )
  })
})

describe('pty', { timeout: 60_000 }, () => {
  it('runs an interactive shell: input in, output through onData, resize, kill', async () => {
    const { terminal, output } = await openTerminal(sandbox)
    const type = (text: string): Promise<void> =>
      sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode(text))

    await type('echo "answer=$((6*7))"; stty size; tty\n')
    await outputMatching(output, /answer=42\r\n24 80\r\n\/dev\/pts\/\d+/)
    await sandbox.pty.resize(terminal.pid, { cols: 132, rows: 40 })
    await type('stty size\n')
    await outputMatching(output, /[\r\n]40 132\r\n/)
    assert.ok((await sandbox.commands.list()).some((p) => p.pid === terminal.pid))

    assert.equal(await sandbox.pty.kill(terminal.pid), true)
    await assert.rejects(terminal.wait(), CommandExitError)
    assert.equal(await sandbox.pty.kill(terminal.pid), false)
  })

  it('ends the shell when it exits, with its exit code', async () => {
    const terminal = await sandbox.pty.create({ cols: 80, rows: 24, onData: () => undefined })
    await sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode('exit 4\n'))
    const error = await terminal.wait().then(
      () => assert.fail('the shell exited 0'),
      (err: unknown) => err,
    )
    assert.ok(error instanceof CommandExitError, String(error))
    assert.equal(error.exitCode, 4)
  })
})

describe('templates', { timeout: 60_000 }, () => {
  it('runs python3, envs and login shells in a sandbox of the debian template', async (t) => {
    const debian = await Sandbox.create('debian', server.connection)
    t.after(() => debian.kill())
    t.diagnostic(`debian sandbox ${debian.sandboxId}`)
    const result = await debian.commands.run(
      'python3 -c "import sys; print(6*7, sys.version_info.major)"; . /etc/os-release; echo $ID',
    )
    assert.equal(result.stdout, '42 3\ndebian\n')
    assert.equal((await debian.getInfo()).templateId, 'debian')
    await assertScopedEnvs(debian)
    await assertLoginEnvironment(debian)
  })
})
