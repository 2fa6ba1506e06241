/**
 * The network lab itself: its host netns reaches the lab's internet (HTTP, HTTPS, echo, banner,
 * DNS with records changed at run time), the internet reports what it saw, the test process
 * reaches the host netns, and closing leaves nothing behind.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readdirSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  startNetworkLab,
  type LabEvent,
  type LeakSnapshot,
  type NetworkLab,
} from '@sandcell/test-utils'

/**
 * Asks `server` for `name`'s A records over UDP or TCP, with Python's standard library only
 * (no resolver of the machine involved), and prints `{"rcode": n, "answers": [...]}`.
 */
const dnsQuery = `
import json, socket, struct, sys
server, name, transport = sys.argv[1:4]
qname = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
query = struct.pack('>HHHHHH', 0x5ca1, 0x0100, 1, 0, 0, 0) + qname + struct.pack('>HH', 1, 1)
if transport == 'tcp':
    s = socket.create_connection((server, 53), timeout=3)
    s.sendall(struct.pack('>H', len(query)) + query)
    def read(n):
        data = b''
        while len(data) < n:
            data += s.recv(n - len(data))
        return data
    r = read(struct.unpack('>H', read(2))[0])
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(query, (server, 53))
    r = s.recv(4096)
def skip(i):
    while r[i]:
        if r[i] >= 192:
            return i + 2
        i += r[i] + 1
    return i + 1
i = skip(12) + 4
answers = []
for _ in range(struct.unpack('>H', r[6:8])[0]):
    i = skip(i)
    rtype, _, _, length = struct.unpack('>HHIH', r[i:i + 10])
    i += 10
    if rtype == 1:
        answers.append(socket.inet_ntoa(r[i:i + length]))
    i += length
print(json.dumps({'rcode': r[3] & 15, 'answers': answers}))
`

/** Connects to a TCP or UDP port, sends `send`, prints what came back (one read). */
const exchange = `
import socket, sys
transport, host, port, send = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
kind = socket.SOCK_STREAM if transport == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(3)
s.connect((host, port))
if send:
    s.send(send)
sys.stdout.write(s.recv(4096).decode())
`

let baseline: LeakSnapshot
let lab: NetworkLab
let startMs: number

before(async () => {
  baseline = snapshotLeaks()
  const started = Date.now()
  lab = await startNetworkLab()
  startMs = Date.now() - started
})

after(async () => {
  const prefix = lab?.prefix
  await lab?.close()
  if (prefix !== undefined) {
    assert.deepEqual(labNetns(prefix), [])
  }
  await assertNoLeaks(baseline, { scope: prefix === undefined ? [] : [prefix] })
})

function labNetns(prefix: string): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => name.startsWith(`${prefix}-`))
}

function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`)
}

async function curl(args: string[]): Promise<{ code: number | null; stdout: string }> {
  const result = await lab.execInHost('curl', ['-sS', '--max-time', '10', ...args])
  assert.equal(result.code, 0, result.stderr)
  return result
}

async function resolve(
  name: string,
  transport: 'udp' | 'tcp' = 'udp',
): Promise<{ rcode: number; answers: string[] }> {
  const result = await lab.execInHost('python3', ['-c', dnsQuery, lab.dnsServer, name, transport])
  assert.equal(result.code, 0, result.stderr)
  return JSON.parse(result.stdout) as { rcode: number; answers: string[] }
}

function isHttpTo(path: string): (event: LabEvent) => boolean {
  return (event) => (event.event === 'http' || event.event === 'https') && event.path === path
}

describe('network lab', { timeout: 60_000 }, () => {
  it('starts in well under the time a test can spare', (t) => {
    t.diagnostic(`startNetworkLab took ${startMs} ms`)
    assert.ok(startMs < 10_000, `${startMs} ms`)
  })

  it('answers HTTP from the address the host connected to, seeing the host uplink as client', async () => {
    const { stdout } = await curl([`http://${lab.servers.primary}/hello?x=1`])
    assert.deepEqual(JSON.parse(stdout), {
      server: lab.servers.primary,
      host: lab.servers.primary,
      path: '/hello?x=1',
      client: lab.uplinkAddress,
      method: 'GET',
      bodyBytes: 0,
    })
    const other = await curl([`http://${lab.servers.other}/`])
    assert.equal((JSON.parse(other.stdout) as { server: string }).server, lab.servers.other)
  })

  it('answers /status/<code> with that status and streams /bytes/<n>', async () => {
    const status = await curl([
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      `http://${lab.servers.primary}/status/503`,
    ])
    assert.equal(status.stdout, '503')
    const sizeBytes = 100 * 1024 * 1024
    const download = await curl([
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{size_download}',
      `http://${lab.servers.secondary}/bytes/${sizeBytes}`,
    ])
    assert.equal(download.stdout, `200 ${sizeBytes}`)
  })

  it('resolves the default records over UDP and TCP, and NXDOMAIN for unknown names', async () => {
    assert.deepEqual(await resolve('example.com'), { rcode: 0, answers: [lab.servers.primary] })
    assert.deepEqual(await resolve('WWW.Example.com', 'tcp'), {
      rcode: 0,
      answers: [lab.servers.secondary],
    })
    assert.deepEqual(await resolve('rebind.test'), { rcode: 0, answers: ['10.0.0.1'] })
    assert.deepEqual(await resolve('nowhere.test'), { rcode: 3, answers: [] })
    const query = await lab.waitForEvent(
      (e) => e.event === 'dns' && e.name === 'nowhere.test',
      2000,
    )
    assert.equal(query?.event === 'dns' && query.rcode, 'NXDOMAIN')
  })

  it('answers changed records once setDnsRecords resolves, and the defaults after a reset', async () => {
    try {
      await lab.setDnsRecords({
        'example.com': [lab.servers.evil, lab.servers.other],
        'new.test': [lab.servers.secondary],
        'other.test': [],
      })
      assert.deepEqual(await resolve('example.com'), {
        rcode: 0,
        answers: [lab.servers.evil, lab.servers.other],
      })
      assert.deepEqual(await resolve('new.test'), { rcode: 0, answers: [lab.servers.secondary] })
      assert.deepEqual(await resolve('other.test'), { rcode: 3, answers: [] })
      assert.deepEqual(await resolve('www.example.com'), {
        rcode: 0,
        answers: [lab.servers.secondary],
      })
    } finally {
      await lab.resetDnsRecords()
    }
    assert.deepEqual(await resolve('example.com'), { rcode: 0, answers: [lab.servers.primary] })
    assert.deepEqual(await resolve('new.test'), { rcode: 3, answers: [] })
  })

  it('rejects records that are not addresses', async () => {
    await assert.rejects(lab.setDnsRecords({ 'bad.test': ['not-an-ip'] }), /not an IP address/)
  })

  it('serves HTTPS for its names with a certificate from its CA, reporting the SNI', async () => {
    const { stdout } = await curl([
      '--cacert',
      lab.caFile,
      '--resolve',
      `example.com:443:${lab.servers.primary}`,
      'https://example.com/tls',
    ])
    assert.deepEqual(JSON.parse(stdout), {
      server: lab.servers.primary,
      host: 'example.com',
      path: '/tls',
      client: lab.uplinkAddress,
      method: 'GET',
      bodyBytes: 0,
      sni: 'example.com',
    })
    const event = await lab.waitForEvent(isHttpTo('/tls'), 2000)
    assert.equal(event?.event === 'https' && event.sni, 'example.com')
    // The certificate is not good for every name: a client checking it refuses others.
    const refused = await lab.execInHost('curl', [
      '-sS',
      '--cacert',
      lab.caFile,
      '--resolve',
      `unlisted.test:443:${lab.servers.primary}`,
      'https://unlisted.test/',
    ])
    assert.equal(refused.code, 60, refused.stderr)
  })

  it('echoes TCP and UDP on port 7 and sends an SSH banner first on port 22', async () => {
    const tcp = await lab.execInHost('python3', [
      '-c',
      exchange,
      'tcp',
      lab.servers.evil,
      '7',
      'ping',
    ])
    assert.equal(tcp.stdout, 'ping', tcp.stderr)
    const udp = await lab.execInHost('python3', [
      '-c',
      exchange,
      'udp',
      lab.servers.other,
      '7',
      'pong',
    ])
    assert.equal(udp.stdout, 'pong', udp.stderr)
    const banner = await lab.execInHost('python3', [
      '-c',
      exchange,
      'tcp',
      lab.servers.primary,
      '22',
      '',
    ])
    assert.equal(banner.stdout, 'SSH-2.0-lab\r\n', banner.stderr)
  })

  it('records every connection it sees, and nothing it did not', async () => {
    await curl([`http://${lab.servers.secondary}/recorded`])
    const request = await lab.waitForEvent(isHttpTo('/recorded'), 2000)
    assert.ok(request?.event === 'http', JSON.stringify(lab.seen()))
    assert.equal(request.server, lab.servers.secondary)
    assert.equal(request.client, lab.uplinkAddress)
    const connection = lab
      .seen()
      .find((e) => e.event === 'tcp' && e.port === 80 && e.clientPort === request.clientPort)
    assert.ok(connection !== undefined, 'the TCP connection is reported too')
    // Nothing asked for this path, so nothing with it may turn up.
    assert.equal(await lab.waitForEvent(isHttpTo('/never'), 200), undefined)
  })

  it('lets the test process reach a listener in the host netns at hostAddress', async () => {
    const listener = spawn(
      lab.hostSpawnPrefix[0] ?? 'nsenter',
      [
        ...lab.hostSpawnPrefix.slice(1),
        'python3',
        '-c',
        [
          'import socket, sys',
          `s = socket.create_server(('${lab.hostAddress}', 0))`,
          'print(s.getsockname()[1], flush=True)',
          'c, peer = s.accept()',
          "c.sendall(('hello ' + peer[0] + '\\n').encode())",
          'c.close()',
        ].join('\n'),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    try {
      const lines = createInterface({ input: listener.stdout })
      const [port] = (await once(lines, 'line', { signal: AbortSignal.timeout(5000) })) as [string]
      const reply = await new Promise<string>((resolve, reject) => {
        let text = ''
        const socket = connect(Number(port), lab.hostAddress)
        socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')))
        socket.on('end', () => resolve(text))
        socket.on('error', reject)
      })
      assert.equal(reply, `hello ${lab.testAddress}\n`)
    } finally {
      listener.kill('SIGKILL')
    }
  })

  it('closes, quickly and twice, leaving no netns, veth or temp dir behind', async (t) => {
    const other = await startNetworkLab({ prefix: `${lab.prefix}b` })
    assert.deepEqual(labNetns(other.prefix).sort(), [`${other.prefix}-host`, `${other.prefix}-out`])
    assert.ok(linkExists(`${other.prefix}-t`))
    // A process left in the host netns would keep it alive; close kills it.
    const straggler = spawn(
      other.hostSpawnPrefix[0] ?? 'nsenter',
      [...other.hostSpawnPrefix.slice(1), 'sleep', '600'],
      {
        stdio: 'ignore',
      },
    )
    const started = Date.now()
    await other.close()
    t.diagnostic(`close took ${Date.now() - started} ms`)
    await other.close()
    assert.deepEqual(labNetns(other.prefix), [])
    assert.equal(linkExists(`${other.prefix}-t`), false)
    assert.deepEqual(
      readdirSync(tmpdir()).filter((name) => name.startsWith(`network-lab-${other.prefix}-`)),
      [],
    )
    assert.notEqual(straggler.exitCode ?? straggler.signalCode, null)
  })

  it('removes what a crashed lab with the same prefix left, then starts', async () => {
    const prefix = `${lab.prefix}c`
    execFileSync('ip', ['netns', 'add', `${prefix}-host`])
    execFileSync('ip', [
      'link',
      'add',
      `${prefix}-t`,
      'type',
      'veth',
      'peer',
      'name',
      'x0',
      'netns',
      `${prefix}-host`,
    ])
    const staleDir = mkdtempSync(join(tmpdir(), `network-lab-${prefix}-`))
    mkdirSync(join(staleDir, 'left'))
    const again = await startNetworkLab({ prefix })
    try {
      assert.equal(existsSync(staleDir), false)
      const { stdout } = await again.execInHost('curl', ['-sS', `http://${again.servers.primary}/`])
      assert.equal((JSON.parse(stdout) as { server: string }).server, again.servers.primary)
    } finally {
      await again.close()
    }
    assert.deepEqual(labNetns(prefix), [])
  })

  it('undoes what it did when a start fails', async () => {
    const prefix = `${lab.prefix}f`
    // The lab program cannot listen within 1 ms, so the start fails past every other step.
    await assert.rejects(
      startNetworkLab({ prefix, startTimeoutMs: 1 }),
      /the lab program did not listen in 1 ms/,
    )
    assert.deepEqual(labNetns(prefix), [])
    assert.equal(linkExists(`${prefix}-t`), false)
    assert.deepEqual(
      readdirSync(tmpdir()).filter((name) => name.startsWith(`network-lab-${prefix}-`)),
      [],
    )
  })

  it('rejects a second lab on a prefix this process has open, and a bad prefix', async () => {
    await assert.rejects(startNetworkLab({ prefix: lab.prefix }), /already has a network lab/)
    await assert.rejects(startNetworkLab({ prefix: 'sandcell-x' }), /not starting with sandcell/)
    await assert.rejects(startNetworkLab({ prefix: 'much-too-long-prefix' }), /1-13 letters/)
  })
})
