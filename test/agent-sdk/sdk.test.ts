// The official e2b SDK against one sandcell agent (the built bundle): proves wire compatibility
// of commands, PTYs and files with what the SDK actually sends and expects.
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import {
  CommandExitError,
  FileNotFoundError,
  FilesystemEventType,
  Sandbox,
  type FilesystemEvent,
} from 'e2b'
import { envdVersion } from '@sandcell/protocol'

const agentBundle = new URL('../../packages/agent/bundle/agent.mjs', import.meta.url).pathname
const userId = 1000

interface LocalAgent {
  root: string
  port: number
  child: ChildProcess
  exited: Promise<number | null>
  marker: string
  logs(): string
}

/** Starts the agent bundle over a temp root with `root` and `user` (uid 1000) and a TCP port. */
async function startLocalAgent(accessToken?: string): Promise<LocalAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-agent-sdk-'))
  chmodSync(dir, 0o755)
  const root = join(dir, 'root')
  mkdirSync(join(root, 'etc'), { recursive: true })
  writeFileSync(
    join(root, 'etc/passwd'),
    `root:x:0:0:root:/root:/bin/bash\nuser:x:${userId}:${userId}::/home/user:/bin/bash\n`,
  )
  writeFileSync(join(root, 'etc/group'), `root:x:0:\nuser:x:${userId}:\n`)
  mkdirSync(join(root, 'root'), { mode: 0o700 })
  mkdirSync(join(root, 'home/user'), { recursive: true })
  chownSync(join(root, 'home/user'), userId, userId)
  const env = { ...process.env }
  delete env.NODE_EXTRA_CA_CERTS
  const child = spawn(
    process.execPath,
    [
      agentBundle,
      '--listen',
      `unix:${join(dir, 'agent.sock')}`,
      '--listen',
      'tcp:127.0.0.1:0',
      '--root',
      root,
      '--ready-fd',
      '3',
    ],
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env },
  )
  let log = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    log += chunk.toString('utf8')
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent not ready: ${log}`)), 10_000)
    ;(child.stdio[3] as Readable).once('data', (chunk: Buffer) => {
      clearTimeout(timer)
      resolve(chunk.toString('utf8'))
    })
  })
  const ready = JSON.parse(line.slice('ready '.length)) as {
    listeners: { kind: string; port?: number }[]
  }
  const port = ready.listeners.find((l) => l.kind === 'tcp')?.port ?? 0
  const marker = randomUUID()
  // What the host does after start: env vars (our leak marker) and, for secured sandboxes, the token.
  const init = await fetch(`http://127.0.0.1:${port}/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      envVars: { SANDCELL_SDK_TEST: marker },
      ...(accessToken === undefined ? {} : { accessToken }),
    }),
  })
  assert.equal(init.status, 204)
  return { root, port, child, exited, marker, logs: () => log }
}

/** Stops the agent and proves that none of its processes survived it. */
async function stopLocalAgent(agent: LocalAgent): Promise<void> {
  agent.child.kill('SIGTERM')
  assert.equal(await agent.exited, 0, agent.logs().slice(-3000))
  const deadline = Date.now() + 5000
  let survivors = markedProcesses(agent.marker)
  while (survivors.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 25))
    survivors = markedProcesses(agent.marker)
  }
  rmSync(join(agent.root, '..'), { recursive: true, force: true })
  assert.deepEqual(survivors, [])
}

function markedProcesses(marker: string): string[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((entry) => {
      try {
        return readFileSync(`/proc/${entry}/environ`, 'utf8')
          .split('\0')
          .includes(`SANDCELL_SDK_TEST=${marker}`)
      } catch {
        return false
      }
    })
}

function sandboxFor(agent: LocalAgent, envdAccessToken?: string): Sandbox {
  return new Sandbox({
    sandboxId: 'local',
    envdVersion,
    sandboxUrl: `http://127.0.0.1:${agent.port}`,
    apiKey: 'unused',
    ...(envdAccessToken === undefined ? {} : { envdAccessToken }),
  })
}

/** Resolves when `check` holds, polling until a deadline. */
async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

describe('e2b SDK against the agent', () => {
  let agent: LocalAgent
  let sandbox: Sandbox

  before(async () => {
    agent = await startLocalAgent()
    sandbox = sandboxFor(agent)
  })
  after(() => stopLocalAgent(agent))

  it('reports the sandbox as running (GET /health)', async () => {
    assert.equal(await sandbox.isRunning(), true)
  })

  it('runs a command in the foreground with output callbacks', async () => {
    const out: string[] = []
    const err: string[] = []
    const result = await sandbox.commands.run('echo hello; echo oops >&2; id -u; pwd', {
      onStdout: (data) => void out.push(data),
      onStderr: (data) => void err.push(data),
    })
    assert.equal(result.exitCode, 0)
    assert.equal(result.stdout, `hello\n${userId}\n${join(agent.root, 'home/user')}\n`)
    assert.equal(result.stderr, 'oops\n')
    assert.equal(out.join(''), result.stdout)
    assert.equal(err.join(''), 'oops\n')
  })

  it('throws CommandExitError for a non-zero exit', async () => {
    await assert.rejects(sandbox.commands.run('echo bad >&2; exit 4'), (error: unknown) => {
      assert.ok(error instanceof CommandExitError)
      assert.equal(error.exitCode, 4)
      assert.equal(error.stderr, 'bad\n')
      assert.equal(error.error, 'exit status 4')
      return true
    })
  })

  it('runs as root, with envs and a cwd', async () => {
    const result = await sandbox.commands.run('id -u; echo $GREETING; pwd', {
      user: 'root',
      envs: { GREETING: 'hi' },
      cwd: '/root',
    })
    assert.equal(result.stdout, `0\nhi\n${join(agent.root, 'root')}\n`)
  })

  it('runs in the background, lists, connects and waits', async () => {
    const handle = await sandbox.commands.run('read line; echo got $line', {
      background: true,
      stdin: true,
    })
    assert.ok(handle.pid > 0)
    const listed = await sandbox.commands.list()
    const process = listed.find((p) => p.pid === handle.pid)
    assert.equal(process?.cmd, '/bin/bash')
    assert.deepEqual(process?.args, ['-l', '-c', 'read line; echo got $line'])
    const connected = await sandbox.commands.connect(handle.pid)
    await handle.sendStdin('it\n')
    const [result, viaConnect] = await Promise.all([handle.wait(), connected.wait()])
    assert.equal(result.stdout, 'got it\n')
    assert.equal(viaConnect.stdout, 'got it\n')
  })

  it('sends stdin and closes it', async () => {
    const handle = await sandbox.commands.run('cat', { background: true, stdin: true })
    await sandbox.commands.sendStdin(handle.pid, 'line one\n')
    await handle.sendStdin('line two\n')
    await handle.closeStdin()
    const result = await handle.wait()
    assert.equal(result.stdout, 'line one\nline two\n')
  })

  it('keeps a command running after disconnect, and kills it', async () => {
    const handle = await sandbox.commands.run('sleep 30', { background: true })
    await handle.disconnect()
    assert.ok((await sandbox.commands.list()).some((p) => p.pid === handle.pid))
    assert.equal(await sandbox.commands.kill(handle.pid), true)
    await eventually(
      'the process to be gone',
      async () => !(await sandbox.commands.list()).some((p) => p.pid === handle.pid),
    )
    assert.equal(await sandbox.commands.kill(handle.pid), false)
  })

  it('kills a command through its handle', async () => {
    const handle = await sandbox.commands.run('sleep 30', { background: true })
    assert.equal(await handle.kill(), true)
    await assert.rejects(
      handle.wait(),
      (error: unknown) => error instanceof CommandExitError && error.exitCode === -1,
    )
  })

  it('creates a PTY, types into it, resizes it and kills it', async () => {
    let output = ''
    const decoder = new TextDecoder()
    const terminal = await sandbox.pty.create({
      cols: 90,
      rows: 20,
      onData: (data) => void (output += decoder.decode(data, { stream: true })),
    })
    const type = (text: string) =>
      sandbox.pty.sendInput(terminal.pid, new TextEncoder().encode(text))
    await type('stty size; echo $TERM\n')
    await eventually('stty output', () => /20 90/.test(output) && /xterm-256color/.test(output))
    await sandbox.pty.resize(terminal.pid, { cols: 132, rows: 43 })
    await type('stty size\n')
    await eventually('resized stty output', () => /43 132/.test(output))
    assert.equal(await sandbox.pty.kill(terminal.pid), true)
    await assert.rejects(terminal.wait(), CommandExitError)
  })

  it('writes and reads text, bytes and many files', async () => {
    const info = await sandbox.files.write('/home/user/docs/hello.txt', 'hello world')
    assert.deepEqual(
      { name: info.name, path: info.path, type: info.type },
      { name: 'hello.txt', path: '/home/user/docs/hello.txt', type: 'file' },
    )
    assert.equal(statSync(join(agent.root, 'home/user/docs/hello.txt')).uid, userId)
    assert.equal(await sandbox.files.read('/home/user/docs/hello.txt'), 'hello world')
    const bytes = new Uint8Array([0, 1, 2, 253, 254, 255])
    await sandbox.files.write('bin/data.bin', bytes.buffer)
    assert.deepEqual(
      [...(await sandbox.files.read('bin/data.bin', { format: 'bytes' }))],
      [...bytes],
    )
    const many = await sandbox.files.write([
      { path: '/home/user/many/a.txt', data: 'A' },
      { path: '/home/user/many/b.txt', data: 'B' },
    ])
    assert.deepEqual(
      many.map((w) => w.path),
      ['/home/user/many/a.txt', '/home/user/many/b.txt'],
    )
    assert.equal(await sandbox.files.read('/home/user/many/b.txt'), 'B')
    await sandbox.files.write('/home/user/empty.txt', '')
    assert.equal(await sandbox.files.read('/home/user/empty.txt'), '')
    await assert.rejects(sandbox.files.read('/home/user/missing.txt'), FileNotFoundError)
  })

  it('lists with depth, checks existence and info, renames, makes and removes', async () => {
    await sandbox.files.write('/home/user/tree/sub/leaf.txt', 'leaf')
    const top = await sandbox.files.list('/home/user/tree')
    assert.deepEqual(
      top.map((e) => [e.name, e.type]),
      [['sub', 'dir']],
    )
    const deep = await sandbox.files.list('/home/user/tree', { depth: 2 })
    assert.deepEqual(
      deep.map((e) => e.path),
      ['/home/user/tree/sub', '/home/user/tree/sub/leaf.txt'],
    )
    const leaf = deep[1]
    assert.equal(leaf?.size, 4)
    assert.equal(leaf?.owner, 'user')
    assert.equal(leaf?.permissions, '-rw-r--r--')
    assert.ok(leaf?.modifiedTime instanceof Date)
    assert.equal(await sandbox.files.exists('/home/user/tree/sub/leaf.txt'), true)
    assert.equal(await sandbox.files.exists('/home/user/tree/none'), false)
    const info = await sandbox.files.getInfo('/home/user/tree/sub')
    assert.equal(info.type, 'dir')
    const renamed = await sandbox.files.rename(
      '/home/user/tree/sub/leaf.txt',
      '/home/user/tree/moved.txt',
    )
    assert.equal(renamed.path, '/home/user/tree/moved.txt')
    assert.equal(await sandbox.files.makeDir('/home/user/tree/new/dir'), true)
    assert.equal(await sandbox.files.makeDir('/home/user/tree/new/dir'), false)
    await sandbox.files.remove('/home/user/tree')
    assert.equal(await sandbox.files.exists('/home/user/tree'), false)
  })

  it('watches a directory for create, write and remove events', async () => {
    await sandbox.files.makeDir('/home/user/watched')
    const events: FilesystemEvent[] = []
    const handle = await sandbox.files.watchDir(
      '/home/user/watched',
      (event) => void events.push(event),
    )
    await sandbox.files.write('/home/user/watched/w.txt', 'one')
    await sandbox.commands.run('echo more >> /dev/null; printf two >> w.txt', {
      cwd: '/home/user/watched',
    })
    await sandbox.files.remove('/home/user/watched/w.txt')
    const has = (type: FilesystemEventType) =>
      events.some((e) => e.name === 'w.txt' && e.type === type)
    await eventually(
      'create, write and remove events',
      () =>
        has(FilesystemEventType.CREATE) &&
        has(FilesystemEventType.WRITE) &&
        has(FilesystemEventType.REMOVE),
    )
    await handle.stop()
  })
})

describe('e2b SDK against a secured agent', () => {
  const token = 'sdk-secret-token'
  let agent: LocalAgent

  before(async () => {
    agent = await startLocalAgent(token)
  })
  after(() => stopLocalAgent(agent))

  it('works with the access token and fails without it', async () => {
    const secured = sandboxFor(agent, token)
    const result = await secured.commands.run('echo secure')
    assert.equal(result.stdout, 'secure\n')
    await secured.files.write('/home/user/s.txt', 'signed')
    const open = sandboxFor(agent)
    await assert.rejects(open.commands.run('echo nope'))
    await assert.rejects(open.files.read('/home/user/s.txt'))
  })

  it('serves signed download and upload URLs, with expiry', async () => {
    const secured = sandboxFor(agent, token)
    const downloadUrl = await secured.downloadUrl('/home/user/s.txt', {
      useSignatureExpiration: 60,
    })
    assert.match(downloadUrl, /signature=v1_/)
    assert.equal(await (await fetch(downloadUrl)).text(), 'signed')
    const uploadUrl = await secured.uploadUrl('/home/user/uploaded.txt')
    const form = new FormData()
    form.append('file', new Blob(['via url']), '/home/user/uploaded.txt')
    const upload = await fetch(uploadUrl, { method: 'POST', body: form })
    assert.equal(upload.status, 200)
    assert.equal(await secured.files.read('/home/user/uploaded.txt'), 'via url')
    const tampered = downloadUrl.replace('s.txt', 'uploaded.txt')
    assert.equal((await fetch(tampered)).status, 401)
  })
})
