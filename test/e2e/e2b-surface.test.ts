/**
 * The rest of the official e2b SDK's public surface against a real `sandcell serve`, call by call:
 * what docs/e2b-compatibility.md lists as working and no other test covers (deprecated aliases,
 * static forms, upload encodings, error classes of bad calls, pty reattach, the git helpers, the
 * bound `E2B` client), and the clear errors of what is not supported (MCP, IAM tokens, volumes,
 * secrets).
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import {
  CommandExitError,
  E2B,
  FileNotFoundError,
  FileType,
  FilesystemEventType,
  GitUpstreamError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  NotFoundError,
  Sandbox,
  SandboxError,
  Secret,
  SecretError,
  TimeoutError,
  Volume,
  VolumeError,
  type FilesystemEvent,
  type SandboxOpts,
} from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess
let sandbox: Sandbox

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
  sandbox = await Sandbox.create(server.connection)
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

/** Kills the sandbox when the test ends, whatever happened. */
function killAfter(t: TestContext, sandboxId: string): void {
  t.diagnostic(`sandbox ${sandboxId}`)
  t.after(async () => {
    await Sandbox.kill(sandboxId, server.connection)
  })
}

async function createSandbox(t: TestContext, options: SandboxOpts = {}): Promise<Sandbox> {
  const created = await Sandbox.create({ ...server.connection, ...options })
  killAfter(t, created.sandboxId)
  return created
}

/** Fails unless `promise` rejects with an instance of `type`; returns the error. */
async function rejection<E extends Error>(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
): Promise<E> {
  const error = await promise.then(
    (value) => assert.fail(`expected ${type.name}, got ${JSON.stringify(value)}`),
    (err: unknown) => err,
  )
  assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`)
  return error
}

/** Every sandbox of this server: the list holds only what a test left running. */
async function liveSandboxIds(): Promise<string[]> {
  const listed = await Sandbox.list(server.connection).nextItems()
  return listed.map((s) => s.sandboxId).sort()
}

describe('Sandbox', { timeout: 60_000 }, () => {
  it('describes a sandbox with the deprecated getFullInfo exactly as getInfo', async () => {
    assert.deepEqual(
      await Sandbox.getFullInfo(sandbox.sandboxId, server.connection),
      await sandbox.getInfo(),
    )
  })

  it('connects from an instance with connect(), extending its lifetime', async (t) => {
    const created = await createSandbox(t, { timeoutMs: 60_000 })
    const endAt = (await created.getInfo()).endAt.getTime()
    assert.equal(await created.connect({ timeoutMs: 600_000 }), created)
    assert.ok((await created.getInfo()).endAt.getTime() > endAt + 500_000)
  })

  it('sets a timeout and snapshots by id with the static calls', async (t) => {
    const created = await createSandbox(t)
    await Sandbox.setTimeout(created.sandboxId, 900_000, server.connection)
    const info = await created.getInfo()
    assert.ok(Math.abs(info.endAt.getTime() - (Date.now() + 900_000)) < 10_000, String(info.endAt))

    await created.files.write('/home/user/static.txt', 'by id')
    const snapshot = await Sandbox.createSnapshot(created.sandboxId, server.connection)
    t.after(() => Sandbox.deleteSnapshot(snapshot.snapshotId, server.connection))
    assert.deepEqual(snapshot.names, [])
    const copy = await createSandbox(t, { template: snapshot.snapshotId })
    assert.equal(await copy.files.read('/home/user/static.txt'), 'by id')
  })

  it('pages through snapshots one at a time', async (t) => {
    const created = await createSandbox(t)
    const taken = [await created.createSnapshot(), await created.createSnapshot()]
    t.after(async () => {
      for (const snapshot of taken) {
        await Sandbox.deleteSnapshot(snapshot.snapshotId, server.connection)
      }
    })
    const paginator = created.listSnapshots({ limit: 1 })
    const first = await paginator.nextItems()
    assert.equal(paginator.hasNext, true)
    const second = await paginator.nextItems()
    assert.equal(paginator.hasNext, false)
    assert.deepEqual(
      [...first, ...second].map((s) => s.snapshotId).sort(),
      taken.map((s) => s.snapshotId).sort(),
    )
  })

  it('answers false when deleting a snapshot that does not exist', async () => {
    assert.equal(await Sandbox.deleteSnapshot('nosuchsnapshot000000', server.connection), false)
  })

  it('pauses with the deprecated betaPause like pause: true, then false when paused', async (t) => {
    const created = await createSandbox(t)
    assert.equal(await created.betaPause(), true)
    assert.equal(await Sandbox.betaPause(created.sandboxId, server.connection), false)
    assert.equal((await created.getInfo()).state, 'paused')
    const resumed = await Sandbox.connect(created.sandboxId, server.connection)
    assert.equal((await resumed.getInfo()).state, 'running')
  })

  it('signs download URLs for another user and with an expiry', async () => {
    await sandbox.files.write('/root/signed.txt', 'root only', { user: 'root' })
    const url = await sandbox.downloadUrl('/root/signed.txt', {
      user: 'root',
      useSignatureExpiration: 60,
    })
    const parsed = new URL(url)
    assert.equal(parsed.searchParams.get('username'), 'root')
    const expiry = Number(parsed.searchParams.get('signature_expiration'))
    assert.ok(Math.abs(expiry - (Date.now() / 1000 + 60)) < 30, String(expiry))
    const response = await fetch(url)
    assert.equal(response.status, 200)
    assert.equal(await response.text(), 'root only')
  })

  it('names its host by port and sandbox under the server domain', () => {
    assert.equal(sandbox.sandboxDomain, 'sandcell.local')
    assert.equal(sandbox.getHost(3000), `3000-${sandbox.sandboxId}.sandcell.local`)
    assert.equal(sandbox.getMcpUrl(), `https://50005-${sandbox.sandboxId}.sandcell.local/mcp`)
    assert.equal(sandbox.trafficAccessToken, undefined)
  })

  it('binds connection options with new E2B(): its Sandbox creates, runs and kills', async () => {
    const client = new E2B({ ...server.connection, headers: { 'X-Client': 'e2b-surface' } })
    const created = await client.Sandbox.create({ metadata: { via: 'E2B' } })
    try {
      assert.equal((await created.commands.run('echo bound')).stdout, 'bound\n')
      const listed = await client.Sandbox.list({ query: { metadata: { via: 'E2B' } } }).nextItems()
      assert.deepEqual(
        listed.map((s) => s.sandboxId),
        [created.sandboxId],
      )
    } finally {
      assert.equal(await created.kill(), true)
    }
  })

  it('refuses a create with IAM workload tokens or volume mounts, naming what is missing', async () => {
    const before = await liveSandboxIds()
    const iam = await rejection(
      Sandbox.create({
        ...server.connection,
        iam: {
          tokens: {
            aws: Secret.iamToken({ audience: 'sts.amazonaws.com', tokenType: 'JWT-SVID' }),
          },
        },
      }),
      SandboxError,
    )
    assert.equal(iam.statusCode, 400)
    assert.match(iam.message, /iam workload identity tokens are not supported/)
    const volumes = await rejection(
      Sandbox.create({ ...server.connection, volumeMounts: { '/mnt/data': 'data' } }),
      SandboxError,
    )
    assert.equal(volumes.statusCode, 400)
    assert.match(volumes.message, /volume mounts are not supported/)
    assert.deepEqual(await liveSandboxIds(), before, 'no sandbox was made')
  })

  it('refuses network rules and an egress proxy on create, naming what is missing', async () => {
    const before = await liveSandboxIds()
    const rules = await rejection(
      Sandbox.create({
        ...server.connection,
        network: {
          rules: { 'api.example.com': [{ transform: { headers: { 'X-Key': 'value' } } }] },
        },
      }),
      SandboxError,
    )
    assert.equal(rules.statusCode, 400)
    assert.match(rules.message, /network\.rules \(header transforms\) are not supported/)
    const proxy = await rejection(
      Sandbox.create({
        ...server.connection,
        network: { egressProxy: { address: 'proxy.example.com:1080' } },
      }),
      SandboxError,
    )
    assert.equal(proxy.statusCode, 400)
    assert.match(proxy.message, /network\.egressProxy is not supported/)
    assert.deepEqual(await liveSandboxIds(), before, 'no sandbox was made')
  })

  it('starts no MCP gateway: the mcp-gateway template is unknown, and base has no gateway', async () => {
    const before = await liveSandboxIds()
    const mcp = { 'github/example/server': { runCmd: 'true' } }
    const unknown = await rejection(Sandbox.create({ ...server.connection, mcp }), SandboxError)
    assert.equal(unknown.statusCode, 404)
    assert.match(unknown.message, /template "mcp-gateway" does not exist/)
    const missing = await rejection(
      Sandbox.create('base', { ...server.connection, mcp }),
      SandboxError,
    )
    assert.match(missing.message, /Failed to start MCP gateway: .*mcp-gateway: command not found/)
    // The SDK kills the sandbox whose gateway did not start.
    assert.deepEqual(await liveSandboxIds(), before)
    await rejection(sandbox.getMcpToken(), FileNotFoundError)
  })

  it('refuses a timeout of 0 with a 400 giving the minimum', async () => {
    const error = await rejection(
      Sandbox.create({ ...server.connection, timeoutMs: 0 }),
      SandboxError,
    )
    assert.equal(error.statusCode, 400)
    assert.match(error.message, /timeout: timeout must be at least 1 second/)
  })
})

describe('commands', { timeout: 60_000 }, () => {
  it('says it can close stdin and gives a command no stdin unless asked', async () => {
    assert.equal(sandbox.commands.supportsStdinClose, true)
    const result = await sandbox.commands.run('read line; echo "[$line] $?"')
    assert.equal(result.stdout, '[] 1\n')
  })

  it('refuses a missing cwd or user with InvalidArgumentError naming it', async () => {
    const cwd = await rejection(
      sandbox.commands.run('pwd', { cwd: '/no/such/dir' }),
      InvalidArgumentError,
    )
    assert.match(cwd.message, /cwd "\/no\/such\/dir" does not exist/)
    const user = await rejection(
      sandbox.commands.run('id', { user: 'nobody-here' }),
      InvalidArgumentError,
    )
    assert.match(user.message, /user "nobody-here" does not exist/)
  })

  it('ends a command that is not found with exit code 127', async () => {
    const error = await rejection(sandbox.commands.run('no-such-command-xyz'), CommandExitError)
    assert.equal(error.exitCode, 127)
    assert.match(error.stderr, /no-such-command-xyz: command not found/)
  })

  it('answers NotFoundError for connect, sendStdin and closeStdin to a pid that does not exist', async () => {
    for (const call of [
      () => sandbox.commands.connect(999_999),
      () => sandbox.commands.sendStdin(999_999, 'x'),
      () => sandbox.commands.closeStdin(999_999),
    ]) {
      const error = await rejection(call(), NotFoundError)
      assert.match(error.message, /process with pid 999999 not found/)
    }
  })

  it('shows the output so far on a running handle, and the exit code after wait', async () => {
    const handle = await sandbox.commands.run('echo a; read go; echo b', {
      background: true,
      stdin: true,
    })
    await waitFor('the first line', () => handle.stdout === 'a\n')
    assert.deepEqual([handle.stderr, handle.exitCode, handle.error], ['', undefined, undefined])
    await handle.sendStdin('\n')
    await handle.wait()
    assert.deepEqual([handle.stdout, handle.exitCode, handle.error], ['a\nb\n', 0, undefined])
  })

  it('ends commands.connect at its timeoutMs and leaves the command running', async () => {
    const handle = await sandbox.commands.run('sleep 60', { background: true })
    await handle.disconnect()
    const again = await sandbox.commands.connect(handle.pid, { timeoutMs: 1_000 })
    await rejection(again.wait(), TimeoutError)
    assert.ok((await sandbox.commands.list()).some((p) => p.pid === handle.pid))
    assert.equal(await sandbox.commands.kill(handle.pid), true)
  })

  it("lists a command's envs and cwd", async () => {
    const handle = await sandbox.commands.run('sleep 30', {
      background: true,
      envs: { LISTED: 'yes' },
      cwd: '/tmp',
    })
    try {
      const listed = (await sandbox.commands.list()).find((p) => p.pid === handle.pid)
      assert.deepEqual(
        { envs: listed?.envs, cwd: listed?.cwd },
        { envs: { LISTED: 'yes' }, cwd: '/tmp' },
      )
    } finally {
      await handle.kill()
    }
  })

  it('stops waiting when its signal aborts, leaving the command running as a disconnect does', async () => {
    const controller = new AbortController()
    setTimeout(() => controller.abort(), 300)
    await rejection(sandbox.commands.run('sleep 41', { signal: controller.signal }), TimeoutError)
    const running = (await sandbox.commands.list()).find(
      (p) => p.args.join(' ') === '-l -c sleep 41',
    )
    assert.ok(running, 'the command runs on')
    assert.equal(await sandbox.commands.kill(running.pid), true)
  })
})

describe('files', { timeout: 60_000 }, () => {
  it('writes and reads gzip-compressed bodies', async () => {
    const written = await sandbox.files.write('/tmp/gzip.txt', 'compressed both ways', {
      gzip: true,
    })
    assert.deepEqual(
      { name: written.name, type: written.type, path: written.path },
      { name: 'gzip.txt', type: FileType.FILE, path: '/tmp/gzip.txt' },
    )
    assert.equal(await sandbox.files.read('/tmp/gzip.txt', { gzip: true }), 'compressed both ways')
    assert.equal((await sandbox.commands.run('cat /tmp/gzip.txt')).stdout, 'compressed both ways')
  })

  it('writes a raw octet-stream body, a ReadableStream and a Blob', async () => {
    await sandbox.files.write('/tmp/octet.txt', 'octets', { useOctetStream: true })
    await sandbox.files.write('/tmp/stream.txt', new Blob(['streamed']).stream())
    await sandbox.files.write('/tmp/blob.txt', new Blob(['a blob']))
    assert.deepEqual(
      await Promise.all(
        ['octet', 'stream', 'blob'].map((n) => sandbox.files.read(`/tmp/${n}.txt`)),
      ),
      ['octets', 'streamed', 'a blob'],
    )
    assert.deepEqual(await sandbox.files.write([]), [])
  })

  it('reads an empty file as empty text and bytes, and streams with an idle timeout', async () => {
    await sandbox.commands.run(': > /tmp/empty')
    assert.equal(await sandbox.files.read('/tmp/empty'), '')
    assert.deepEqual(await sandbox.files.read('/tmp/empty', { format: 'bytes' }), new Uint8Array())
    await sandbox.files.write('/tmp/idle.txt', 'x'.repeat(100_000))
    const stream = await sandbox.files.read('/tmp/idle.txt', {
      format: 'stream',
      streamIdleTimeoutMs: 5_000,
    })
    let size = 0
    for await (const chunk of stream) {
      size += chunk.length
    }
    assert.equal(size, 100_000)
  })

  it('refuses operations on the wrong kind of entry with InvalidArgumentError', async () => {
    await sandbox.files.write('/tmp/plain.txt', 'plain')
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => sandbox.files.read('/tmp'), /is a directory/],
      [() => sandbox.files.write('/tmp', 'x'), /is a directory/],
      [() => sandbox.files.list('/tmp/plain.txt'), /is not a directory/],
      [() => sandbox.files.makeDir('/tmp/plain.txt'), /already exists and is not a directory/],
      [() => sandbox.files.watchDir('/tmp/plain.txt', () => undefined), /is not a directory/],
    ]
    for (const [call, message] of cases) {
      const error = await rejection(call(), InvalidArgumentError)
      assert.match(error.message, message)
    }
  })

  it('removes a missing path quietly but renames or watches one with FileNotFoundError', async () => {
    await sandbox.files.remove('/tmp/never-there')
    await rejection(sandbox.files.rename('/tmp/never-there', '/tmp/other'), FileNotFoundError)
    await rejection(
      sandbox.files.watchDir('/tmp/never-there', () => undefined),
      FileNotFoundError,
    )
  })

  it('renames over an existing file, replacing it', async () => {
    await sandbox.files.write('/tmp/from.txt', 'new')
    await sandbox.files.write('/tmp/onto.txt', 'old')
    const moved = await sandbox.files.rename('/tmp/from.txt', '/tmp/onto.txt')
    assert.equal(moved.path, '/tmp/onto.txt')
    assert.equal(await sandbox.files.read('/tmp/onto.txt'), 'new')
  })

  it("describes a symlink by its target's type with the link's permissions", async () => {
    await sandbox.files.write('/tmp/target.txt', 'pointed at')
    await sandbox.commands.run('ln -sfn /tmp/target.txt /tmp/link.txt')
    const info = await sandbox.files.getInfo('/tmp/link.txt')
    assert.deepEqual(
      { type: info.type, symlinkTarget: info.symlinkTarget, permissions: info.permissions },
      { type: FileType.FILE, symlinkTarget: '/tmp/target.txt', permissions: 'lrwxrwxrwx' },
    )
    const listed = (await sandbox.files.list('/tmp')).find((e) => e.name === 'link.txt')
    assert.equal(listed?.symlinkTarget, '/tmp/target.txt')
  })

  it("answers a permission error with envd's codes", async () => {
    const stat = await rejection(sandbox.files.getInfo('/root/signed.txt'), SandboxError)
    assert.match(stat.message, /permission denied/)
    const write = await rejection(sandbox.files.write('/etc/not-mine', 'x'), SandboxError)
    assert.match(write.message, /^403: permission denied/)
  })

  it('raises NotEnoughSpaceError when the disk is full', async (t) => {
    const full = await createSandbox(t)
    await full.commands
      .run('head -c 2000M /dev/zero > /home/user/fill', { timeoutMs: 120_000 })
      .catch((err: unknown) => {
        assert.ok(err instanceof CommandExitError, String(err))
        assert.match(err.stderr, /No space left on device/)
      })
    await rejection(
      full.files.write('/home/user/more', new ArrayBuffer(4 << 20)),
      NotEnoughSpaceError,
    )
  })

  it('ends a watch at its timeoutMs and tells onExit why', async (t) => {
    await sandbox.files.makeDir('/tmp/watch-timeout')
    let exited: Error | undefined
    let exits = 0
    const watcher = await sandbox.files.watchDir('/tmp/watch-timeout', () => undefined, {
      timeoutMs: 1_000,
      onExit: (err) => {
        exited = err
        exits += 1
      },
    })
    t.after(() => watcher.stop())
    await waitFor('the watch to end', () => exits === 1)
    assert.ok(exited instanceof TimeoutError, String(exited))
  })

  it('reports chmod and rename events', async (t) => {
    await sandbox.files.makeDir('/tmp/watch-kinds')
    await sandbox.files.write('/tmp/watch-kinds/a', 'a')
    const events: FilesystemEvent[] = []
    const watcher = await sandbox.files.watchDir('/tmp/watch-kinds', (event) => {
      events.push(event)
    })
    t.after(() => watcher.stop())
    const seen = (type: FilesystemEventType, name: string): boolean =>
      events.some((e) => e.type === type && e.name === name)

    await sandbox.commands.run('chmod 600 /tmp/watch-kinds/a')
    await waitFor('a chmod event', () => seen(FilesystemEventType.CHMOD, 'a'))
    await sandbox.files.rename('/tmp/watch-kinds/a', '/tmp/watch-kinds/b')
    await waitFor(
      'rename and create events',
      () => seen(FilesystemEventType.RENAME, 'a') && seen(FilesystemEventType.CREATE, 'b'),
    )
  })
})

describe('pty', { timeout: 60_000 }, () => {
  it('starts a terminal with envs, cwd and user, and reattaches to it with pty.connect', async () => {
    const terminal = await sandbox.pty.create({
      cols: 80,
      rows: 24,
      envs: { PTY_VAR: 'from-create' },
      cwd: '/tmp',
      user: 'root',
      timeoutMs: 0,
      onData: () => undefined,
    })
    await terminal.disconnect()
    const decoder = new TextDecoder()
    let output = ''
    const again = await sandbox.pty.connect(terminal.pid, {
      onData: (data) => {
        output += decoder.decode(data, { stream: true })
      },
    })
    await sandbox.pty.sendInput(
      terminal.pid,
      new TextEncoder().encode('echo "[$PTY_VAR $(pwd) $(id -u)]"\n'),
    )
    await waitFor('the reattached output', () => output.includes('[from-create /tmp 0]'))
    assert.equal(await sandbox.pty.kill(terminal.pid), true)
    await rejection(again.wait(), CommandExitError)
  })

  it('ends a terminal at its timeoutMs', async () => {
    const terminal = await sandbox.pty.create({
      cols: 80,
      rows: 24,
      timeoutMs: 1_000,
      onData: () => undefined,
    })
    await rejection(terminal.wait(), TimeoutError)
  })

  it('answers NotFoundError for a terminal pid that does not exist', async () => {
    for (const call of [
      () => sandbox.pty.sendInput(999_999, new Uint8Array([1])),
      () => sandbox.pty.resize(999_999, { cols: 10, rows: 10 }),
      () => sandbox.pty.connect(999_999, { onData: () => undefined }),
    ]) {
      await rejection(call(), NotFoundError)
    }
  })

  it('refuses stdin for a terminal, which takes pty input', async () => {
    const terminal = await sandbox.pty.create({ cols: 80, rows: 24, onData: () => undefined })
    try {
      const error = await rejection(sandbox.commands.sendStdin(terminal.pid, 'x'), SandboxError)
      assert.match(error.message, /runs on a terminal: send pty input, not stdin/)
    } finally {
      await sandbox.pty.kill(terminal.pid)
    }
  })
})

describe('git', { timeout: 120_000 }, () => {
  let debian: Sandbox
  const repo = '/home/user/repo'
  const origin = '/home/user/origin.git'

  before(async () => {
    debian = await Sandbox.create('debian', { ...server.connection, timeoutMs: 600_000 })
  })

  after(async () => {
    await debian?.kill()
  })

  it('configures, commits, branches, pushes, clones, pulls, resets and restores', async () => {
    const git = debian.git
    await git.init(repo, { initialBranch: 'main' })
    await git.init(origin, { bare: true, initialBranch: 'main' })
    await git.configureUser('Test User', 'test@example.com')
    assert.equal(await git.getConfig('user.email'), 'test@example.com')
    await git.setConfig('sandcell.scope', 'local', { scope: 'local', path: repo })
    assert.equal(await git.getConfig('sandcell.scope', { scope: 'local', path: repo }), 'local')
    assert.equal(await git.getConfig('no.such-key'), undefined)

    await debian.files.write(`${repo}/a.txt`, 'one\n')
    const untracked = await git.status(repo)
    assert.deepEqual(
      untracked.fileStatus.map((f) => [f.name, f.status]),
      [['a.txt', 'untracked']],
    )
    await git.add(repo)
    await git.commit(repo, 'first')
    await git.commit(repo, 'empty', { authorName: 'A', authorEmail: 'a@b.c', allowEmpty: true })
    assert.equal((await git.status(repo)).isClean, true)

    await git.createBranch(repo, 'feature')
    assert.deepEqual(await git.branches(repo), {
      branches: ['feature', 'main'],
      currentBranch: 'feature',
    })
    await git.checkoutBranch(repo, 'main')
    await git.deleteBranch(repo, 'feature', { force: true })
    assert.deepEqual((await git.branches(repo)).branches, ['main'])

    await git.remoteAdd(repo, 'origin', origin)
    await git.remoteAdd(repo, 'origin', origin, { overwrite: true, fetch: true })
    assert.equal(await git.remoteGet(repo, 'origin'), origin)
    assert.equal(await git.remoteGet(repo, 'nope'), undefined)
    await git.push(repo, { remote: 'origin', branch: 'main' })

    await git.clone(origin, { path: '/home/user/clone', branch: 'main', depth: 1 })
    assert.equal(await debian.files.read('/home/user/clone/a.txt'), 'one\n')
    await debian.files.write(`${repo}/b.txt`, 'two\n')
    await git.add(repo, { files: ['b.txt'] })
    await git.commit(repo, 'second')
    await git.push(repo)
    await git.pull('/home/user/clone')
    assert.equal(await debian.files.read('/home/user/clone/b.txt'), 'two\n')

    await git.reset(repo, { mode: 'hard', target: 'HEAD~1' })
    assert.equal(await debian.files.exists(`${repo}/b.txt`), false)
    await debian.files.write(`${repo}/a.txt`, 'changed\n')
    await git.restore(repo, { paths: ['a.txt'] })
    assert.equal(await debian.files.read(`${repo}/a.txt`), 'one\n')
  })

  it("raises the SDK's GitUpstreamError for a pull without upstream", async () => {
    const alone = '/home/user/alone'
    await debian.git.init(alone, { initialBranch: 'main' })
    await rejection(debian.git.pull(alone), GitUpstreamError)
  })

  it('stores credentials with dangerouslyAuthenticate', async () => {
    await debian.git.dangerouslyAuthenticate({
      username: 'someone',
      password: 'token',
      host: 'git.example.com',
    })
    assert.equal(
      await debian.files.read('/home/user/.git-credentials'),
      'https://someone:token@git.example.com\n',
    )
    assert.equal(await debian.git.getConfig('credential.helper'), 'store')
  })
})

describe('volumes and secrets', { timeout: 60_000 }, () => {
  it('answers every Volume call with a 501 VolumeError saying volumes are not supported', async () => {
    const volume = new Volume('vol_1', 'data', 'token')
    for (const call of [
      () => Volume.create('data', server.connection),
      () => Volume.list(server.connection),
      () => Volume.getInfo('vol_1', server.connection),
      () => Volume.connect('vol_1', server.connection),
      () => Volume.destroy('vol_1', server.connection),
      () => volume.list('/', { apiUrl: server.url }),
      () => volume.writeFile('/a.txt', 'x', { apiUrl: server.url }),
    ]) {
      const error = await rejection(call(), VolumeError)
      assert.match(error.message, /^501: volumes are not supported by this server/)
    }
  })

  it('answers every Secret call with a 501 SecretError; exists and destroy never say false', async () => {
    for (const call of [
      () => Secret.create('token', 'value', server.connection),
      () => Secret.update('token', 'value', server.connection),
      () => Secret.getInfo('token', server.connection),
      () => Secret.list(server.connection).nextItems(),
      () => Secret.exists('token', server.connection),
      () => Secret.destroy('token', server.connection),
    ]) {
      const error = await rejection(call(), SecretError)
      assert.match(error.message, /^501: secrets are not supported by this server/)
    }
    assert.equal(Secret.fill('token'), '${e2b.secrets.token}')
  })
})
