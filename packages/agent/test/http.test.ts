// envd HTTP routes against the real agent bundle: /health, /files (download, upload), /init,
// /envs, /metrics, access tokens and signed URLs.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import { after, before, describe, it } from 'node:test'
import { gunzipSync, gzipSync } from 'node:zlib'
import { Code, ConnectError } from '@connectrpc/connect'
import { Filesystem, Process } from '@sandcell/protocol'
import { basicAuth, startAgent, testUserId, type TestAgent } from './helpers/agent.js'
import { collectRun } from './helpers/process-events.js'

/** A multipart body as the e2b SDK builds it (undici FormData), with its content type. */
async function multipart(
  files: { name: string; filename: string; data: string | Buffer }[],
): Promise<{ body: Buffer; contentType: string }> {
  const form = new FormData()
  for (const file of files) {
    form.append(file.name, new Blob([file.data]), file.filename)
  }
  const request = new Request('http://x/', { method: 'POST', body: form })
  return {
    body: Buffer.from(await request.arrayBuffer()),
    contentType: request.headers.get('content-type') ?? '',
  }
}

/** envd's v1 signature, computed independently of the agent's code. */
function sign(
  path: string,
  op: 'read' | 'write',
  user: string,
  token: string,
  expiration?: number,
): string {
  const raw = [
    path,
    op,
    user,
    token,
    ...(expiration === undefined ? [] : [String(expiration)]),
  ].join(':')
  return `v1_${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`
}

function peakRssKiB(pid: number): number {
  return Number(/^VmHWM:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

describe('envd HTTP routes', () => {
  let agent: TestAgent

  before(async () => {
    agent = await startAgent()
    writeFileSync(agent.host('/root/secret'), 'top secret', { mode: 0o600 })
  })
  after(() => agent.dispose())

  it('answers GET /health with 204', async () => {
    const res = await agent.http('GET', '/health')
    assert.equal(res.status, 204)
    assert.equal(res.body.length, 0)
  })

  it('answers an unknown route with 404 in envd error shape', async () => {
    const res = await agent.http('GET', '/nope')
    assert.equal(res.status, 404)
    assert.deepEqual(res.json(), { code: 404, message: 'no route for GET /nope' })
  })

  it('downloads a file with its type, disposition and length', async () => {
    writeFileSync(agent.host('/home/user/notes.txt'), 'some notes')
    const res = await agent.http('GET', '/files?path=/home/user/notes.txt&username=user')
    assert.equal(res.status, 200)
    assert.equal(res.text(), 'some notes')
    assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8')
    assert.equal(res.headers['content-length'], '10')
    assert.match(res.headers['content-disposition'] ?? '', /^attachment; filename="notes.txt"/)
    const binary = await agent.http('GET', '/files?path=notes.txt')
    assert.equal(binary.text(), 'some notes', 'relative to the default user home')
  })

  it('downloads gzip when asked and a byte range', async () => {
    const data = 'abcdefghij'.repeat(1000)
    writeFileSync(agent.host('/home/user/big.txt'), data)
    const gz = await agent.http('GET', '/files?path=/home/user/big.txt', {
      headers: { 'accept-encoding': 'gzip, deflate' },
    })
    assert.equal(gz.headers['content-encoding'], 'gzip')
    assert.equal(gunzipSync(gz.body).toString(), data)
    const range = await agent.http('GET', '/files?path=/home/user/big.txt', {
      headers: { range: 'bytes=10-14' },
    })
    assert.equal(range.status, 206)
    assert.equal(range.text(), 'abcde')
    assert.equal(range.headers['content-range'], `bytes 10-14/${data.length}`)
  })

  it('answers 404 for a missing file, 400 for a directory or empty path, 403 for a forbidden one', async () => {
    const missing = await agent.http('GET', '/files?path=/home/user/missing.txt')
    assert.equal(missing.status, 404)
    assert.deepEqual(missing.json(), {
      code: 404,
      message: '/home/user/missing.txt does not exist',
    })
    const dir = await agent.http('GET', '/files?path=/home/user')
    assert.equal(dir.status, 400)
    assert.match(dir.json<{ message: string }>().message, /is a directory/)
    assert.equal((await agent.http('GET', '/files')).status, 400)
    const forbidden = await agent.http('GET', '/files?path=/root/secret&username=user')
    assert.equal(forbidden.status, 403)
    const asRoot = await agent.http('GET', '/files?path=/root/secret&username=root')
    assert.equal(asRoot.text(), 'top secret')
    const unknownUser = await agent.http('GET', '/files?path=/etc/passwd&username=mallory')
    assert.equal(unknownUser.status, 400)
    assert.match(unknownUser.text(), /mallory/)
  })

  it('refuses to download a FIFO instead of blocking', async () => {
    execFileSync('mkfifo', [agent.host('/home/user/fifo')])
    const res = await agent.http('GET', '/files?path=/home/user/fifo')
    assert.equal(res.status, 400)
    assert.match(res.text(), /not a regular file/)
  })

  it('uploads one multipart file to the path query, owned by the user with new parents', async () => {
    const { body, contentType } = await multipart([
      { name: 'file', filename: '/home/user/up/one.txt', data: 'uno' },
    ])
    const res = await agent.http('POST', '/files?path=/home/user/up/deep/one.txt&username=user', {
      headers: { 'content-type': contentType },
      body,
    })
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(res.json(), [
      { name: 'one.txt', type: 'file', path: '/home/user/up/deep/one.txt' },
    ])
    assert.equal(readFileSync(agent.host('/home/user/up/deep/one.txt'), 'utf8'), 'uno')
    for (const path of ['/home/user/up', '/home/user/up/deep', '/home/user/up/deep/one.txt']) {
      const stats = statSync(agent.host(path))
      assert.equal(stats.uid, testUserId, path)
      assert.equal(stats.gid, testUserId, path)
    }
    assert.equal(statSync(agent.host('/home/user/up/deep/one.txt')).mode & 0o777, 0o644)
  })

  it('uploads many multipart files, each to its filename', async () => {
    const { body, contentType } = await multipart([
      { name: 'file', filename: '/home/user/many/a.txt', data: 'A' },
      { name: 'other', filename: 'ignored.txt', data: 'skip' },
      { name: 'file', filename: 'many/b/ü.txt', data: Buffer.from([0, 1, 2, 255]) },
    ])
    const res = await agent.http('POST', '/files?username=user', {
      headers: { 'content-type': contentType },
      body,
    })
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(res.json(), [
      { name: 'a.txt', type: 'file', path: '/home/user/many/a.txt' },
      { name: 'ü.txt', type: 'file', path: '/home/user/many/b/ü.txt' },
    ])
    assert.deepEqual([...readFileSync(agent.host('/home/user/many/b/ü.txt'))], [0, 1, 2, 255])
    assert.equal(existsSync(agent.host('/home/user/ignored.txt')), false)
  })

  it('rejects two parts for the same path', async () => {
    const { body, contentType } = await multipart([
      { name: 'file', filename: '/home/user/dup.txt', data: '1' },
      { name: 'file', filename: '/home/user/dup.txt', data: '2' },
    ])
    const res = await agent.http('POST', '/files', {
      headers: { 'content-type': contentType },
      body,
    })
    assert.equal(res.status, 400)
    assert.match(res.text(), /multiple files to the same path/)
  })

  it('uploads a raw octet-stream body, also gzip-encoded', async () => {
    const raw = await agent.http('POST', '/files?path=raw.bin', {
      headers: { 'content-type': 'application/octet-stream' },
      body: Buffer.from('raw bytes'),
    })
    assert.deepEqual(raw.json(), [{ name: 'raw.bin', type: 'file', path: '/home/user/raw.bin' }])
    assert.equal(readFileSync(agent.host('/home/user/raw.bin'), 'utf8'), 'raw bytes')
    const gz = await agent.http('POST', '/files?path=/home/user/raw.gz.txt', {
      headers: { 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' },
      body: gzipSync('unzipped'),
    })
    assert.equal(gz.status, 200, gz.text())
    assert.equal(readFileSync(agent.host('/home/user/raw.gz.txt'), 'utf8'), 'unzipped')
    const noPath = await agent.http('POST', '/files', {
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    })
    assert.equal(noPath.status, 400)
    const badType = await agent.http('POST', '/files?path=x', {
      headers: { 'content-type': 'text/plain' },
      body: 'x',
    })
    assert.equal(badType.status, 400)
    const badGzip = await agent.http('POST', '/files?path=/home/user/bad.gz', {
      headers: { 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' },
      body: 'not gzip',
    })
    assert.equal(badGzip.status, 500 <= badGzip.status ? badGzip.status : 400)
  })

  it('cannot upload where the user may not write (403) and creates nothing', async () => {
    const res = await agent.http('POST', '/files?path=/etc/evil/x&username=user', {
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    })
    assert.equal(res.status, 403)
    assert.equal(existsSync(agent.host('/etc/evil')), false)
    const overwrite = await agent.http('POST', '/files?path=/etc/passwd&username=user', {
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    })
    assert.equal(overwrite.status, 403)
    assert.match(readFileSync(agent.host('/etc/passwd'), 'utf8'), /^root:/)
  })

  it('streams a large upload and download without buffering them in the agent', async () => {
    const size = 96 * 1024 * 1024
    const chunk = Buffer.alloc(1024 * 1024, 7)
    let sent = 0
    const source = new Readable({
      read() {
        if (sent >= size) {
          this.push(null)
          return
        }
        sent += chunk.length
        this.push(chunk)
      },
    })
    const before = peakRssKiB(agent.pid)
    const up = await agent.http('POST', '/files?path=/home/user/large.bin', {
      headers: { 'content-type': 'application/octet-stream' },
      body: source,
    })
    assert.equal(up.status, 200, up.text())
    assert.equal(statSync(agent.host('/home/user/large.bin')).size, size)
    const down = await agent.http('GET', '/files?path=/home/user/large.bin')
    assert.equal(down.body.length, size)
    const growthMiB = (peakRssKiB(agent.pid) - before) / 1024
    assert.ok(growthMiB < 48, `agent peak RSS grew by ${growthMiB.toFixed(1)} MiB`)
  })

  it('answers 507 when the disk is full', async (t) => {
    const small = agent.host('/home/user/small')
    mkdirSync(small)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0777', 'tmpfs', small])
    t.after(() => execFileSync('umount', [small]))
    const res = await agent.http('POST', '/files?path=/home/user/small/fill.bin', {
      headers: { 'content-type': 'application/octet-stream' },
      body: Buffer.alloc(256 * 1024),
    })
    assert.equal(res.status, 507, res.text())
    assert.deepEqual(Object.keys(res.json<object>()), ['code', 'message'])
  })

  it('reports metrics in envd shape', async () => {
    const res = await agent.http('GET', '/metrics')
    assert.equal(res.status, 200)
    const metrics = res.json<Record<string, number>>()
    for (const key of [
      'ts',
      'cpu_count',
      'cpu_used_pct',
      'mem_total',
      'mem_used',
      'mem_total_mib',
      'mem_used_mib',
      'disk_total',
      'disk_used',
    ]) {
      assert.equal(typeof metrics[key], 'number', key)
    }
    assert.ok((metrics.cpu_count ?? 0) >= 1)
    assert.ok((metrics.mem_total ?? 0) > 0)
    assert.ok((metrics.disk_total ?? 0) > 0)
  })

  it('applies /init: env vars for processes and /envs, default user and workdir', async () => {
    mkdirSync(agent.host('/home/user/work'))
    chmodSync(agent.host('/home/user/work'), 0o777)
    const init = await agent.http('POST', '/init', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        envVars: { [agent.marker.name]: agent.marker.value, FROM_INIT: 'yes' },
        defaultUser: 'root',
        defaultWorkdir: '/home/user/work',
        timestamp: new Date().toISOString(),
        hyperloopIP: '10.0.0.1',
      }),
    })
    assert.equal(init.status, 204, init.text())
    const envs = await agent.http('GET', '/envs')
    assert.deepEqual(envs.json(), { [agent.marker.name]: agent.marker.value, FROM_INIT: 'yes' })
    const run = await collectRun(
      agent
        .client(Process)
        .start({ process: { cmd: '/bin/sh', args: ['-c', 'id -u; pwd; echo $FROM_INIT'] } }),
    )
    assert.equal(run.stdout, `0\n${agent.host('/home/user/work')}\nyes\n`)
    const upload = await agent.http('POST', '/files?path=', {
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x',
    })
    assert.equal(upload.status, 400)
    const restore = await agent.http('POST', '/init', {
      body: JSON.stringify({ defaultUser: 'user' }),
    })
    assert.equal(restore.status, 204)
    assert.equal((await agent.http('POST', '/init', { body: '{nope' })).status, 400)
    assert.equal(
      (await agent.http('POST', '/init', { body: JSON.stringify({ envVars: { A: 1 } }) })).status,
      400,
    )
  })
})

describe('access token and signed URLs', () => {
  const token = 'tok-initial-secret'
  let agent: TestAgent

  before(async () => {
    agent = await startAgent({ accessToken: token })
    writeFileSync(agent.host('/home/user/signed.txt'), 'signed content')
  })
  after(() => agent.dispose())

  it('lets /health through without a token', async () => {
    assert.equal((await agent.http('GET', '/health')).status, 204)
  })

  it('rejects routes and RPCs without the token with 401 in envd shape', async () => {
    for (const [method, path] of [
      ['GET', '/envs'],
      ['GET', '/metrics'],
      ['POST', '/init'],
      ['GET', '/files?path=/home/user/signed.txt'],
    ] as const) {
      const res = await agent.http(method, path, {
        headers: { 'x-access-token': method === 'GET' && path.startsWith('/files') ? 'wrong' : '' },
      })
      assert.equal(res.status, 401, `${method} ${path}`)
      assert.equal(res.json<{ code: number }>().code, 401)
    }
    const client = agent.client(Filesystem, { accessToken: 'wrong' })
    await assert.rejects(
      client.stat({ path: '/etc/passwd' }),
      (err: unknown) => err instanceof ConnectError && err.code === Code.Unauthenticated,
    )
    const noToken = await agent.http('POST', '/filesystem.Filesystem/Stat', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ path: '/etc/passwd' }),
    })
    assert.equal(noToken.status, 401)
  })

  it('serves everything with the right token', async () => {
    const res = await agent.http('GET', '/files?path=/home/user/signed.txt', {
      headers: { 'x-access-token': token },
    })
    assert.equal(res.text(), 'signed content')
    const { entry } = await agent.client(Filesystem).stat({ path: '/home/user/signed.txt' })
    assert.equal(entry?.size, 14n)
  })

  it('accepts a signed download URL, and rejects a wrong or expired one', async () => {
    const path = '/home/user/signed.txt'
    const ok = await agent.http(
      'GET',
      `/files?path=${encodeURIComponent(path)}&signature=${encodeURIComponent(sign(path, 'read', '', token))}`,
    )
    assert.equal(ok.text(), 'signed content')
    const future = Math.floor(Date.now() / 1000) + 60
    const withUser = await agent.http(
      'GET',
      `/files?path=${encodeURIComponent(path)}&username=user&signature=${encodeURIComponent(sign(path, 'read', 'user', token, future))}&signature_expiration=${future}`,
    )
    assert.equal(withUser.status, 200)
    const past = Math.floor(Date.now() / 1000) - 1
    const expired = await agent.http(
      'GET',
      `/files?path=${encodeURIComponent(path)}&signature=${encodeURIComponent(sign(path, 'read', '', token, past))}&signature_expiration=${past}`,
    )
    assert.equal(expired.status, 401)
    assert.match(expired.text(), /expired/)
    const wrong = await agent.http(
      'GET',
      `/files?path=${encodeURIComponent(path)}&signature=${encodeURIComponent(sign(path, 'read', '', 'other'))}`,
    )
    assert.equal(wrong.status, 401)
    assert.match(wrong.text(), /invalid signature/)
    const otherPath = await agent.http(
      'GET',
      `/files?path=/etc/passwd&signature=${encodeURIComponent(sign(path, 'read', '', token))}`,
    )
    assert.equal(otherPath.status, 401)
    const missing = await agent.http('GET', `/files?path=${encodeURIComponent(path)}`)
    assert.equal(missing.status, 401)
  })

  it('accepts a signed upload URL only for writing', async () => {
    const path = '/home/user/signed-upload.txt'
    const body = { headers: { 'content-type': 'application/octet-stream' }, body: 'via signature' }
    const readSig = await agent.http(
      'POST',
      `/files?path=${encodeURIComponent(path)}&signature=${encodeURIComponent(sign(path, 'read', '', token))}`,
      body,
    )
    assert.equal(readSig.status, 401)
    const ok = await agent.http(
      'POST',
      `/files?path=${encodeURIComponent(path)}&signature=${encodeURIComponent(sign(path, 'write', '', token))}`,
      body,
    )
    assert.equal(ok.status, 200, ok.text())
    assert.equal(readFileSync(agent.host(path), 'utf8'), 'via signature')
  })

  it('requires the current token to re-init, and lets it rotate the token', async () => {
    const denied = await agent.http('POST', '/init', {
      body: JSON.stringify({ accessToken: 'stolen' }),
    })
    assert.equal(denied.status, 401)
    const rotated = await agent.http('POST', '/init', {
      headers: { 'x-access-token': token },
      body: JSON.stringify({
        accessToken: 'tok-rotated',
        envVars: { [agent.marker.name]: agent.marker.value },
      }),
    })
    assert.equal(rotated.status, 204)
    assert.equal(
      (await agent.http('GET', '/envs', { headers: { 'x-access-token': token } })).status,
      401,
    )
    agent.accessToken = 'tok-rotated'
    assert.equal(
      (await agent.http('GET', '/envs', { headers: { 'x-access-token': 'tok-rotated' } })).status,
      200,
    )
    const run = await collectRun(
      agent.client(Process, { user: 'user' }).start({ process: { cmd: '/bin/true' } }),
    )
    assert.equal(run.end?.exitCode, 0)
  })

  it('authenticates uploads by the basic-auth user of RPCs too', () => {
    assert.equal(basicAuth('user'), 'Basic dXNlcjo=')
  })
})
