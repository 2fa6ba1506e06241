// POST /archive against the real agent bundle (run as root): trees with every entry kind, plain
// and gzip, owners and modes, merging, the entries it refuses, the disk limit and streaming.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { Readable } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { fileSignature } from '@sandcell/protocol'
import { pack, type Header } from 'tar-stream'
import { startAgent, startAgentFor, testUserId, type TestAgent } from './helpers/agent.js'

const mtime = new Date('2022-02-02T02:02:02Z')

interface TarEntry {
  name: string
  type?: Header['type']
  data?: string | Buffer
  mode?: number
  linkname?: string
}

/** A tar of `entries` in order, written by tar-stream (independent of the agent's parser). */
async function tar(entries: TarEntry[]): Promise<Buffer> {
  const archive = pack()
  for (const { data, ...entry } of entries) {
    archive.entry({ type: 'file', mode: 0o644, mtime, ...entry }, data ?? '')
  }
  archive.finalize()
  const chunks: Buffer[] = []
  for await (const chunk of archive) {
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** A tar of one file of `sizeBytes`, made while it is sent; `stop()` ends a body nobody reads. */
function streamedTar(name: string, sizeBytes: number): { body: Readable; stop(): void } {
  const archive = pack()
  const sink = archive.entry({ name, size: sizeBytes, mode: 0o644, mtime })
  const chunk = Buffer.alloc(1024 * 1024, 0x5a)
  let stopped = false
  const produce = async (): Promise<void> => {
    for (let sent = 0; sent < sizeBytes && !stopped; sent += chunk.length) {
      if (!sink.write(chunk.subarray(0, Math.min(chunk.length, sizeBytes - sent)))) {
        await once(sink, 'drain')
      }
    }
    sink.end(undefined)
    archive.finalize()
  }
  // A failure shows as a short body, which the test's assertions report.
  produce().catch(() => undefined)
  return {
    body: Readable.from(archive),
    stop: () => {
      stopped = true
      archive.destroy()
    },
  }
}

function peakRssKiB(pid: number): number {
  return Number(/^VmHWM:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

const tree: TarEntry[] = [
  { name: './', type: 'directory', mode: 0o700 },
  { name: './app/', type: 'directory', mode: 0o750 },
  { name: './app/bin/', type: 'directory', mode: 0o755 },
  { name: './app/bin/run', data: '#!/bin/sh\necho run\n', mode: 0o755 },
  { name: './app/lib/deep/data.json', data: '{"a":1}', mode: 0o600 },
  { name: './app/bin/sh', type: 'symlink', linkname: '/bin/busybox' },
  { name: './app/current', type: 'symlink', linkname: 'bin' },
  { name: './app/bin/run-too', type: 'link', linkname: './app/bin/run' },
]

describe('POST /archive', () => {
  let agent: TestAgent

  before(async () => {
    agent = await startAgent()
  })
  after(() => agent.dispose())

  const post = (query: string, body: Buffer | Readable, headers: Record<string, string> = {}) =>
    agent.http('POST', `/archive?${query}`, {
      headers: { 'content-type': 'application/x-tar', ...headers },
      body,
    })

  const ownersBelow = (sandboxPath: string): string[] => {
    const found: string[] = []
    const walk = (path: string): void => {
      const stats = lstatSync(agent.host(path))
      found.push(`${path} ${stats.uid}:${stats.gid}`)
      if (stats.isDirectory()) {
        for (const name of readdirSync(agent.host(path)).sort()) {
          walk(`${path}/${name}`)
        }
      }
    }
    walk(sandboxPath)
    return found
  }

  for (const gzip of [false, true]) {
    it(`extracts a tree of every entry kind from a ${gzip ? 'gzip' : 'plain'} tar, owned by the user`, async () => {
      const dest = `/srv/tree-${gzip ? 'gz' : 'plain'}`
      const body = await tar(tree)
      const res = await post(`path=${dest}&username=user`, gzip ? gzipSync(body) : body)
      assert.equal(res.status, 200, res.text())
      assert.deepEqual(res.json(), { entries: 7, bytes: 26 })
      assert.equal(readFileSync(agent.host(`${dest}/app/bin/run`), 'utf8'), '#!/bin/sh\necho run\n')
      assert.equal(readFileSync(agent.host(`${dest}/app/lib/deep/data.json`), 'utf8'), '{"a":1}')
      assert.equal(readlinkSync(agent.host(`${dest}/app/bin/sh`)), '/bin/busybox')
      assert.equal(readlinkSync(agent.host(`${dest}/app/current`)), 'bin')
      const run = statSync(agent.host(`${dest}/app/bin/run`))
      assert.equal(statSync(agent.host(`${dest}/app/bin/run-too`)).ino, run.ino)
      assert.equal(run.mode & 0o7777, 0o755)
      assert.equal(run.mtime.getTime(), mtime.getTime())
      assert.equal(statSync(agent.host(`${dest}/app`)).mode & 0o7777, 0o750)
      assert.equal(statSync(agent.host(`${dest}/app/lib/deep/data.json`)).mode & 0o7777, 0o600)
      assert.equal(statSync(agent.host(`${dest}/app/lib`)).mode & 0o7777, 0o755)
      const owner = `${testUserId}:${testUserId}`
      assert.deepEqual(
        ownersBelow(dest).filter((line) => !line.endsWith(` ${owner}`)),
        [],
        'everything below the destination, the destination included, is the user’s',
      )
      assert.equal(statSync(agent.host('/srv')).uid, testUserId, 'a missing parent too')
    })
  }

  it('applies the mode to files and directories, not symlinks', async () => {
    const res = await post('path=/srv/moded&username=user&mode=0700', await tar(tree))
    assert.equal(res.status, 200, res.text())
    for (const path of ['app', 'app/bin', 'app/bin/run', 'app/lib/deep/data.json']) {
      assert.equal(statSync(agent.host(`/srv/moded/${path}`)).mode & 0o7777, 0o700, path)
    }
    assert.equal(lstatSync(agent.host('/srv/moded/app/current')).mode & 0o777, 0o777)
    const bad = await post('path=/srv/moded&mode=rwx', await tar(tree))
    assert.equal(bad.status, 400)
    assert.match(bad.json<{ message: string }>().message, /mode must be an octal permission/)
  })

  it('merges into an existing directory, which keeps its owner and mode', async () => {
    mkdirSync(agent.host('/opt/existing/keep'), { recursive: true, mode: 0o711 })
    writeFileSync(agent.host('/opt/existing/keep/old.txt'), 'old')
    const res = await post(
      'path=/opt/existing&username=user',
      await tar([
        { name: 'keep/new.txt', data: 'new' },
        { name: 'added/', type: 'directory', mode: 0o750 },
      ]),
    )
    assert.equal(res.status, 200, res.text())
    assert.equal(readFileSync(agent.host('/opt/existing/keep/old.txt'), 'utf8'), 'old')
    assert.equal(readFileSync(agent.host('/opt/existing/keep/new.txt'), 'utf8'), 'new')
    const kept = statSync(agent.host('/opt/existing/keep'))
    assert.equal(kept.uid, 0)
    assert.equal(kept.mode & 0o7777, 0o711)
    assert.equal(statSync(agent.host('/opt/existing/keep/new.txt')).uid, testUserId)
    assert.equal(statSync(agent.host('/opt/existing/added')).mode & 0o7777, 0o750)
  })

  it('writes as root where the owner could not, like COPY --chown', async () => {
    mkdirSync(agent.host('/opt/root-only'), { recursive: true, mode: 0o755 })
    const res = await post('path=/opt/root-only/bin&username=user', await tar([{ name: 'tool' }]))
    assert.equal(res.status, 200, res.text())
    assert.equal(statSync(agent.host('/opt/root-only/bin/tool')).uid, testUserId)
    assert.equal(statSync(agent.host('/opt/root-only')).uid, 0)
  })

  it('resolves a relative path against the user’s home, and defaults the user like /files', async () => {
    const res = await post('path=rel/dir', await tar([{ name: 'f.txt', data: 'x' }]))
    assert.equal(res.status, 200, res.text())
    const file = statSync(agent.host('/home/user/rel/dir/f.txt'))
    assert.equal(file.uid, testUserId)
    const asRoot = await post('path=rel&username=root', await tar([{ name: 'r.txt' }]))
    assert.equal(asRoot.status, 200, asRoot.text())
    assert.equal(statSync(agent.host('/root/rel/r.txt')).uid, 0)
  })

  it('rejects an unknown user, naming it, and a missing path', async () => {
    const unknown = await post('path=/tmp/x&username=mallory', await tar([{ name: 'f' }]))
    assert.equal(unknown.status, 400)
    assert.match(unknown.text(), /mallory/)
    const noPath = await post('username=user', await tar([{ name: 'f' }]))
    assert.equal(noPath.status, 400)
    assert.match(noPath.text(), /path is required/)
    assert.equal(existsSync(agent.host('/tmp/x')), false)
  })

  const refused: { title: string; entry: TarEntry; message: string }[] = [
    {
      title: 'a .. entry',
      entry: { name: '../../escaped.txt', data: 'x' },
      message:
        'archive entry "../../escaped.txt" has a .. component; entries must stay below the destination',
    },
    {
      title: 'an absolute entry',
      entry: { name: '/escaped.txt', data: 'x' },
      message:
        'archive entry "/escaped.txt" has an absolute name; entries must be relative to the destination',
    },
    {
      title: 'a device node',
      entry: { name: 'dev/sda', type: 'block-device' },
      message: 'archive entry "dev/sda": device nodes cannot be copied',
    },
    {
      title: 'a FIFO',
      entry: { name: 'pipe', type: 'fifo' },
      message: 'archive entry "pipe": FIFOs cannot be copied',
    },
    {
      title: 'a hard link out of the archive',
      entry: { name: 'shadow', type: 'link', linkname: '/etc/passwd' },
      message:
        'archive entry "shadow" is a hard link to "/etc/passwd", which is not an earlier regular file of this archive',
    },
  ]
  for (const [index, { title, entry, message }] of refused.entries()) {
    it(`rejects ${title} with 400, keeps what came before and writes nothing after`, async () => {
      const dest = `/srv/refused-${index}`
      const res = await post(
        `path=${dest}`,
        await tar([{ name: 'before.txt', data: 'b' }, entry, { name: 'after.txt', data: 'a' }]),
      )
      assert.equal(res.status, 400, res.text())
      assert.deepEqual(res.json(), { code: 400, message })
      assert.equal(readFileSync(agent.host(`${dest}/before.txt`), 'utf8'), 'b')
      assert.equal(existsSync(agent.host(`${dest}/after.txt`)), false)
      assert.deepEqual(readdirSync(agent.host(dest)), ['before.txt'])
      assert.equal(existsSync(agent.host('/escaped.txt')), false)
      assert.equal(existsSync(agent.host('/srv/escaped.txt')), false)
    })
  }

  it('cannot write through a symlink the archive made', async () => {
    mkdirSync(agent.host('/etc/target'))
    const res = await post(
      'path=/srv/link-attack',
      await tar([
        { name: 'out', type: 'symlink', linkname: '/etc/target' },
        { name: 'out/planted', data: 'x' },
      ]),
    )
    assert.equal(res.status, 400, res.text())
    assert.match(
      res.json<{ message: string }>().message,
      /^archive entry "out\/planted" is below \/srv\/link-attack\/out, a symlink of this archive/,
    )
    assert.deepEqual(readdirSync(agent.host('/etc/target')), [])
  })

  it('rejects a body that is not a tar, not gzip or empty', async () => {
    const notTar = await post('path=/srv/bad', Buffer.alloc(2048, 'x'))
    assert.equal(notTar.status, 400)
    assert.match(notTar.text(), /the body is not a valid tar archive/)
    const badGzip = await post('path=/srv/bad', Buffer.from([0x1f, 0x8b, 1, 2, 3, 4, 5]))
    assert.equal(badGzip.status, 400)
    assert.match(badGzip.text(), /the body is not valid gzip/)
    const empty = await post('path=/srv/bad', Buffer.alloc(0))
    assert.equal(empty.status, 400)
    assert.match(empty.text(), /the body is empty/)
    const truncated = (await tar([{ name: 'f', data: 'x'.repeat(4096) }])).subarray(0, 1500)
    const cut = await post('path=/srv/bad', truncated)
    assert.equal(cut.status, 400)
    assert.match(cut.text(), /not a valid tar archive: Unexpected end of data/)
  })

  it('answers 507 when the disk is full, also while the client is still sending', async (t) => {
    const small = agent.host('/home/user/small')
    mkdirSync(small)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0777', 'tmpfs', small])
    t.after(() => execFileSync('umount', [small]))
    const whole = await post(
      'path=/home/user/small/a',
      await tar([{ name: 'fill.bin', data: Buffer.alloc(1024 * 1024) }]),
    )
    assert.equal(whole.status, 507, whole.text())
    assert.match(whole.json<{ message: string }>().message, /^not enough disk space: extract to /)
    const streamed = streamedTar('huge.bin', 1024 * 1024 * 1024)
    t.after(() => streamed.stop())
    const started = Date.now()
    const res = await post('path=/home/user/small/b', streamed.body)
    assert.equal(res.status, 507, res.text())
    assert.ok(Date.now() - started < 10_000, 'answered without reading the whole body')
  })

  it('streams a large archive without buffering it in the agent', async () => {
    const size = 96 * 1024 * 1024
    const before = peakRssKiB(agent.pid)
    const res = await post('path=/srv/large', streamedTar('large.bin', size).body)
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(res.json(), { entries: 1, bytes: size })
    assert.equal(statSync(agent.host('/srv/large/large.bin')).size, size)
    const growthMiB = (peakRssKiB(agent.pid) - before) / 1024
    assert.ok(growthMiB < 48, `agent peak RSS grew by ${growthMiB.toFixed(1)} MiB`)
  })
})

describe('POST /archive with an access token', () => {
  it('needs the token header; a signed URL is not enough', async (t) => {
    const agent = await startAgentFor(t, { accessToken: 'secret-token' })
    const body = await tar([{ name: 'f.txt', data: 'x' }])
    const without = await agent.http('POST', '/archive?path=/tmp/a', { body })
    assert.equal(without.status, 401)
    const expiration = Math.floor(Date.now() / 1000) + 600
    const signature = fileSignature('/tmp/a', 'write', 'user', 'secret-token', expiration)
    const signedQuery = `path=/tmp/a&username=user&signature=${encodeURIComponent(signature)}&signature_expiration=${expiration}`
    const signedUpload = await agent.http('POST', `/files?${signedQuery}`, {
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    })
    assert.equal(signedUpload.status, 200, 'the signature is valid for /files')
    const signed = await agent.http('POST', `/archive?${signedQuery}`, { body })
    assert.equal(signed.status, 401)
    const withToken = await agent.http('POST', '/archive?path=/tmp/b', {
      headers: { 'x-access-token': 'secret-token' },
      body,
    })
    assert.equal(withToken.status, 200, withToken.text())
    assert.equal(readFileSync(agent.host('/tmp/b/f.txt'), 'utf8'), 'x')
  })
})
