/**
 * Sandbox networking through the official e2b SDK, offline: a real `sandcell serve` runs in a
 * network lab's host namespace whose uplink leads to a lab "internet" (HTTP, HTTPS, DNS, echo
 * servers that report what reaches them). Internet on and off, allow and deny by address, block
 * and domain, updateNetwork, port exposure (HTTP, 100 MiB, WebSocket), traffic tokens, and the
 * attacks: the server, the host, other sandboxes, rule changes from inside, raw sockets.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { ALL_TRAFFIC, CommandExitError, Sandbox, type SandboxOpts } from 'e2b'
import { WebSocket } from 'ws'
import {
  assertNoLeaks,
  labServers,
  snapshotLeaks,
  startNetworkLab,
  startServeProcess,
  testCgroupParent,
  testTemplatesDir,
  type LeakSnapshot,
  type NetworkLab,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let lab: NetworkLab
let dataDir: string
let server: ServeProcess
/** A sandbox with the default rules (internet on), shared by the tests that leave it so. */
let open: Sandbox

interface Outcome {
  exitCode: number
  stdout: string
  stderr: string
  ms: number
}

/** Runs a shell command; a non-zero exit is a result, not an error. */
async function sh(sandbox: Sandbox, cmd: string, timeoutMs = 30_000): Promise<Outcome> {
  const started = performance.now()
  try {
    const result = await sandbox.commands.run(cmd, { timeoutMs })
    return { ...result, ms: performance.now() - started }
  } catch (err) {
    if (err instanceof CommandExitError) {
      return {
        exitCode: err.exitCode,
        stdout: err.stdout,
        stderr: err.stderr,
        ms: performance.now() - started,
      }
    }
    throw err
  }
}

/** curl's exit code for a GET; 0 = reached. `-m 5`: a denied connection must fail far sooner. */
async function curl(sandbox: Sandbox, url: string, extra = ''): Promise<Outcome> {
  return sh(sandbox, `curl -sS -o /dev/null -m 5 ${extra} ${url}`)
}

async function assertReaches(sandbox: Sandbox, url: string, extra = ''): Promise<void> {
  const result = await curl(sandbox, url, extra)
  assert.equal(result.exitCode, 0, `${url} should be reachable: ${result.stderr}`)
}

/** Refused at once (a reset or an ICMP error), never a timeout the client has to wait out. */
async function assertRefused(sandbox: Sandbox, url: string, extra = ''): Promise<void> {
  const result = await curl(sandbox, url, extra)
  assert.notEqual(result.exitCode, 0, `${url} should be refused`)
  assert.notEqual(result.exitCode, 28, `${url} timed out instead of failing fast: ${result.stderr}`)
  assert.ok(result.ms < 2000, `${url} took ${Math.round(result.ms)} ms to fail`)
}

function create(options: SandboxOpts = {}): Promise<Sandbox> {
  return Sandbox.create({ ...server.connection, ...options })
}

/** A plain HTTP request to the server with exactly these headers (Host included). */
function fetchVia(
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; bytes: number }> {
  const url = new URL(server.url)
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path, headers, agent: false },
      (res) => {
        let body = ''
        let bytes = 0
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length
          if (body.length < 4096) {
            body += chunk.toString('utf8')
          }
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, bytes }))
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end()
  })
}

/** Starts a service in the sandbox and waits until it answers on its port from inside. */
async function serve(sandbox: Sandbox, cmd: string, port: number): Promise<void> {
  await sandbox.commands.run(cmd, { background: true })
  const ready = await sh(
    sandbox,
    `for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:${port}/ && exit 0; sleep 0.05; done; exit 1`,
  )
  assert.equal(ready.exitCode, 0, `the service on ${port} did not start: ${ready.stderr}`)
}

before(async () => {
  baseline = snapshotLeaks()
  lab = await startNetworkLab()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-net-'))
  server = await startServeProcess({
    dataDir,
    spawnPrefix: lab.hostSpawnPrefix,
    host: lab.hostAddress,
    killSandboxesOnExit: true,
    env: {
      SANDCELL_NETWORK_DNS_SERVERS: lab.dnsServer,
      SANDCELL_NETWORK_POOL_SIZE: '4',
      SANDCELL_MICROVM_IMAGES_DIR:
        process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images',
    },
  })
  open = await create()
})

after(async () => {
  try {
    await open?.kill()
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
    if (lab !== undefined) {
      const tables = await lab.execInHost('nft', ['list', 'tables'])
      // The host table stays for the next start; nothing per sandbox is left in it.
      assert.doesNotMatch(tables.stdout, /sandcell-|scv/)
      // Removed namespaces take their links with them when the kernel's cleanup runs.
      let links = await lab.execInHost('ip', ['-o', 'link'])
      for (let tries = 0; tries < 150 && /scv\d+/.test(links.stdout); tries += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100))
        links = await lab.execInHost('ip', ['-o', 'link'])
      }
      assert.doesNotMatch(links.stdout, /scv\d+/, 'no slot link is left')
    }
  } finally {
    await lab?.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

describe('internet access', () => {
  it('reaches the internet by default, by address and by name, over HTTP and HTTPS', async () => {
    await assertReaches(open, `http://${labServers.primary}/`)
    const named = await sh(open, 'curl -sS -m 5 http://example.com/')
    assert.equal(named.exitCode, 0, named.stderr)
    assert.equal((JSON.parse(named.stdout) as { server: string }).server, labServers.primary)
    await open.files.write('/tmp/lab-ca.pem', lab.caPem)
    await assertReaches(open, 'https://www.example.com/', '--cacert /tmp/lab-ca.pem')
    const resolv = await open.files.read('/etc/resolv.conf')
    assert.match(resolv, /^nameserver 10\.\d+\.\d+\.\d+$/m)
  })

  it('arrives from the host uplink address, NATed', async () => {
    const seen = await sh(open, `curl -sS -m 5 http://${labServers.other}/`)
    assert.equal((JSON.parse(seen.stdout) as { client: string }).client, lab.uplinkAddress)
  })

  it('cannot reach anything with allowInternetAccess: false: TCP, UDP, ICMP and DNS fail fast', async (t) => {
    const offline = await create({ allowInternetAccess: false })
    t.after(() => offline.kill())
    const since = Date.now()
    await assertRefused(offline, `http://${labServers.primary}/`)
    await assertRefused(offline, `https://${labServers.primary}/`, '-k')
    const udp = await sh(
      offline,
      `python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'x', ('${labServers.primary}', 7)); print(s.recv(10))"`,
    )
    assert.notEqual(udp.exitCode, 0, 'UDP got an answer')
    assert.match(udp.stderr, /PermissionError|Operation not permitted|refused/)
    const icmp = await sh(offline, icmpProbe(labServers.primary))
    assert.notEqual(icmp.exitCode, 0, `ICMP got an answer: ${icmp.stdout}`)
    const dns = await sh(offline, 'getent hosts example.com')
    assert.notEqual(dns.exitCode, 0, 'DNS answered an offline sandbox')
    const direct = await sh(
      offline,
      `python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'x', ('${lab.dnsServer}', 53)); s.recv(10)"`,
    )
    assert.notEqual(direct.exitCode, 0, 'a resolver outside was reachable')
    assert.equal(
      lab.seen().some((event) => event.client === lab.uplinkAddress && event.at >= since),
      false,
    )
  })

  it('answers ICMP echo when open', async () => {
    const icmp = await sh(open, icmpProbe(labServers.primary))
    assert.equal(icmp.exitCode, 0, icmp.stderr)
  })
})

/** Python: one ICMP echo over a datagram socket (no raw socket needed); exit 0 on a reply. */
function icmpProbe(address: string): string {
  return `python3 -c "
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(2)
s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'sandcell', ('${address}', 0))
print(s.recv(64)[:1])
"`
}

describe('egress rules', () => {
  it('allows only what allowOut names when denyOut is ALL_TRAFFIC; allow beats deny', async (t) => {
    const sandbox = await create({
      network: { denyOut: [ALL_TRAFFIC], allowOut: [labServers.primary, '198.51.100.0/24'] },
    })
    t.after(() => sandbox.kill())
    await assertReaches(sandbox, `http://${labServers.primary}/`)
    await assertReaches(sandbox, `http://${labServers.other}/`)
    await assertRefused(sandbox, `http://${labServers.secondary}/`)
    await assertRefused(sandbox, `http://${labServers.primary}:22/`)
    const info = await Sandbox.getInfo(sandbox.sandboxId, server.connection)
    assert.deepEqual(info.network?.allowOut, [labServers.primary, '198.51.100.0/24'])
  })

  it('refuses only what denyOut names, by address and by block', async (t) => {
    const sandbox = await create({
      network: { denyOut: [labServers.secondary, '198.51.100.0/24'] },
    })
    t.after(() => sandbox.kill())
    await assertRefused(sandbox, `http://${labServers.secondary}/`)
    await assertRefused(sandbox, `http://${labServers.other}/`)
    await assertReaches(sandbox, `http://${labServers.primary}/`)
  })

  it('replaces the rules with updateNetwork: new connections follow at once; {} reopens', async (t) => {
    const sandbox = await create()
    t.after(() => sandbox.kill())
    await sandbox.updateNetwork({ denyOut: [labServers.secondary] })
    await assertRefused(sandbox, `http://${labServers.secondary}/`)
    await assertReaches(sandbox, `http://${labServers.primary}/`)
    await sandbox.updateNetwork({ denyOut: [ALL_TRAFFIC], allowOut: [labServers.secondary] })
    await assertReaches(sandbox, `http://${labServers.secondary}/`)
    await assertRefused(sandbox, `http://${labServers.primary}/`)
    await sandbox.updateNetwork({})
    await assertReaches(sandbox, `http://${labServers.primary}/`)
    await assertReaches(sandbox, `http://${labServers.secondary}/`)
    await Sandbox.updateNetwork(
      sandbox.sandboxId,
      { allowInternetAccess: false },
      server.connection,
    )
    await assertRefused(sandbox, `http://${labServers.primary}/`)
  })

  it('refuses private ranges even when allowOut names them', async (t) => {
    const sandbox = await create({ network: { allowOut: ['10.0.0.0/8', '169.254.169.254'] } })
    t.after(() => sandbox.kill())
    await assertRefused(sandbox, 'http://10.0.0.1/')
    await assertRefused(sandbox, 'http://169.254.169.254/latest/meta-data/')
  })
})

describe('domain rules', () => {
  let sandbox: Sandbox

  before(async () => {
    sandbox = await create({
      network: {
        denyOut: [ALL_TRAFFIC],
        allowOut: ['example.com', '*.allowed.test', 'rebind.test'],
      },
    })
    await sandbox.files.write('/tmp/lab-ca.pem', lab.caPem)
  })

  after(() => sandbox?.kill())

  it('lets through only names allowed, by TLS SNI and by HTTP Host', async () => {
    await assertReaches(sandbox, 'https://example.com/', '--cacert /tmp/lab-ca.pem')
    await assertReaches(sandbox, 'http://example.com/')
    await assertRefused(sandbox, 'https://evilexample.com/', '--cacert /tmp/lab-ca.pem')
    await assertRefused(sandbox, 'https://www.example.com/', '--cacert /tmp/lab-ca.pem')
  })

  it('matches *.allowed.test below the apex only, never look-alikes', async () => {
    // No DNS record: the proxy resolves the name itself, finds nothing and refuses, whatever
    // address the sandbox named.
    await assertRefused(
      sandbox,
      'https://a.b.allowed.test/',
      // The certificate's *.allowed.test covers one label; the rule covers any depth.
      `-k --resolve a.b.allowed.test:443:${labServers.primary}`,
    )
    await lab.setDnsRecords({ 'a.b.allowed.test': [labServers.primary] })
    await assertReaches(sandbox, 'https://a.b.allowed.test/', '-k')
    await assertRefused(
      sandbox,
      'https://allowed.test/',
      `--cacert /tmp/lab-ca.pem --resolve allowed.test:443:${labServers.primary}`,
    )
  })

  it('dials the allowed name, not the address the sandbox chose (SNI ≠ dialled IP)', async () => {
    const result = await sh(
      sandbox,
      `curl -sS -m 5 --cacert /tmp/lab-ca.pem --resolve example.com:443:${labServers.evil} https://example.com/`,
    )
    assert.equal(result.exitCode, 0, result.stderr)
    assert.equal((JSON.parse(result.stdout) as { server: string }).server, labServers.primary)
    const http = await sh(
      sandbox,
      `curl -sS -m 5 -H 'Host: example.com' http://${labServers.evil}/`,
    )
    assert.equal((JSON.parse(http.stdout) as { server: string }).server, labServers.primary)
  })

  it('rejects an allowed name that resolves to a private address (DNS rebinding)', async () => {
    await assertRefused(
      sandbox,
      'http://rebind.test/',
      `--resolve rebind.test:80:${labServers.primary}`,
    )
  })

  it('refuses other ports and raw addresses, and resolves only allowed names', async () => {
    await assertRefused(sandbox, `http://${labServers.primary}:22/`)
    await assertRefused(sandbox, `https://${labServers.primary}/`, '-k')
    const allowed = await sh(sandbox, 'getent hosts example.com')
    assert.match(allowed.stdout, new RegExp(labServers.primary.replaceAll('.', '\\.')))
    const other = await sh(sandbox, 'getent hosts other.test')
    assert.notEqual(other.exitCode, 0, 'DNS answered a name the sandbox may not reach')
  })
})

describe('port exposure', () => {
  it('serves any port a process listens on, by header and by PORT-ID host', async (t) => {
    const sandbox = await create()
    t.after(() => sandbox.kill())
    await serve(sandbox, 'python3 -m http.server 8000 --bind 127.0.0.1 --directory /tmp', 8000)
    const byHeader = await fetchVia('/', {
      'e2b-sandbox-id': sandbox.sandboxId,
      'e2b-sandbox-port': '8000',
    })
    assert.equal(byHeader.status, 200)
    assert.match(byHeader.body, /Directory listing/)
    const host = sandbox.getHost(8000)
    assert.match(host, new RegExp(`^8000-${sandbox.sandboxId}\\.`))
    const byHost = await fetchVia('/', { host })
    assert.equal(byHost.status, 200)
    const closed = await fetchVia('/', { host: sandbox.getHost(8001) })
    assert.equal(closed.status, 502)
    assert.equal(
      (JSON.parse(closed.body) as { message: string }).message,
      'The sandbox is running but port is not open',
    )
  })

  it('streams a 100 MiB download from a sandbox port intact', async (t) => {
    const sandbox = await create()
    t.after(() => sandbox.kill())
    await sh(sandbox, 'mkdir -p /tmp/www && head -c 104857600 /dev/zero > /tmp/www/big')
    await serve(sandbox, 'python3 -m http.server 8080 --directory /tmp/www', 8080)
    const big = await fetchVia('/big', {
      'e2b-sandbox-id': sandbox.sandboxId,
      'e2b-sandbox-port': '8080',
    })
    assert.equal(big.status, 200)
    assert.equal(big.bytes, 100 * 1024 * 1024)
  })

  it('relays a WebSocket echo from a sandbox port', async (t) => {
    const sandbox = await create()
    t.after(() => sandbox.kill())
    await sandbox.files.write('/tmp/ws-echo.mjs', webSocketEchoServer)
    await serve(sandbox, 'node /tmp/ws-echo.mjs 9000', 9000)
    const socket = new WebSocket(`${server.url.replace('http', 'ws')}/echo`, {
      headers: { 'e2b-sandbox-id': sandbox.sandboxId, 'e2b-sandbox-port': '9000' },
    })
    await new Promise((resolve, reject) => {
      socket.once('open', resolve)
      socket.once('error', reject)
    })
    const reply = new Promise<string>((resolve) =>
      socket.once('message', (d) => resolve((d as Buffer).toString())),
    )
    socket.send('hello sandbox')
    assert.equal(await reply, 'echo: hello sandbox')
    socket.close()
  })

  it('requires the traffic token when allowPublicTraffic is false; envd is unaffected', async (t) => {
    const [secured, neighbour] = await Promise.all([
      create({ network: { allowPublicTraffic: false } }),
      create({ network: { allowPublicTraffic: false } }),
    ])
    t.after(() => Promise.all([secured.kill(), neighbour.kill()]))
    assert.ok(secured.trafficAccessToken !== undefined && secured.trafficAccessToken.length > 20)
    await serve(secured, 'python3 -m http.server 8000 --directory /tmp', 8000)
    const headers = { 'e2b-sandbox-id': secured.sandboxId, 'e2b-sandbox-port': '8000' }
    assert.equal((await fetchVia('/', headers)).status, 403)
    for (const token of ['wrong', neighbour.trafficAccessToken ?? '']) {
      const res = await fetchVia('/', { ...headers, 'e2b-traffic-access-token': token })
      assert.equal(res.status, 403)
      assert.match(res.body, /is invalid/)
    }
    const ok = await fetchVia('/', {
      ...headers,
      'e2b-traffic-access-token': secured.trafficAccessToken,
    })
    assert.equal(ok.status, 200)
    assert.equal((await secured.commands.run('echo envd')).stdout, 'envd\n')
  })

  it('shows the service the masked Host, the original in X-Forwarded-Host', async (t) => {
    const sandbox = await create({
      network: { maskRequestHost: 'custom-host.example.com:${PORT}' },
    })
    t.after(() => sandbox.kill())
    await sandbox.files.write('/tmp/headers.py', headersEchoServer)
    await serve(sandbox, 'python3 /tmp/headers.py 8080', 8080)
    const res = await fetchVia('/', { host: sandbox.getHost(8080) })
    const seen = JSON.parse(res.body) as Record<string, string>
    assert.equal(seen.host, 'custom-host.example.com:8080')
    assert.equal(seen['x-forwarded-host'], sandbox.getHost(8080))
  })

  it('answers 502 "The sandbox was not found" for a killed sandbox', async () => {
    const sandbox = await create()
    const host = sandbox.getHost(8000)
    await sandbox.kill()
    const res = await fetchVia('/', { host })
    assert.equal(res.status, 502)
    assert.deepEqual(JSON.parse(res.body), {
      sandboxId: sandbox.sandboxId,
      message: 'The sandbox was not found',
      code: 502,
    })
  })
})

describe('attacks', () => {
  it('cannot reach the server, the host or its other addresses', async () => {
    const port = new URL(server.url).port
    const gateway = (await sh(open, "ip route | awk '/default/ {print $3}'")).stdout.trim()
    for (const address of [gateway, lab.hostAddress, lab.uplinkAddress]) {
      await assertRefused(open, `http://${address}:${port}/health`)
      await assertRefused(open, `http://${address}:22/`)
    }
  })

  it("cannot reach another sandbox's address, even where it listens", async (t) => {
    const other = await create()
    t.after(() => other.kill())
    await serve(other, 'python3 -m http.server 8000 --directory /tmp', 8000)
    const address = (
      await sh(other, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
    ).stdout.trim()
    assert.match(address, /^10\./)
    await assertRefused(open, `http://${address}:8000/`)
  })

  it('cannot change its own rules, routes or addresses from inside, even as root', async (t) => {
    const sandbox = await create({ allowInternetAccess: false })
    t.after(() => sandbox.kill())
    for (const cmd of [
      'nft flush ruleset',
      'nft add table inet mine',
      'ip route del default',
      'ip addr add 203.0.113.99/32 dev eth0',
      'ip link set eth0 down',
      'sysctl -w net.ipv4.ip_forward=1',
    ]) {
      const result = await sandbox.commands.run(cmd, { user: 'root' }).then(
        (r) => r.exitCode,
        (err: unknown) => (err instanceof CommandExitError ? err.exitCode : -1),
      )
      assert.notEqual(result, 0, `${cmd} succeeded`)
    }
    const unshared = await sh(sandbox, 'unshare -rn true')
    assert.notEqual(unshared.exitCode, 0, 'a nested user and network namespace was made')
    await assertRefused(sandbox, `http://${labServers.primary}/`)
  })

  it('cannot open raw or packet sockets to spoof addresses or ARP', async () => {
    for (const family of [
      'socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW',
      'socket.AF_PACKET, socket.SOCK_RAW, 0x0806',
    ]) {
      const result = await sh(open, `python3 -c "import socket; socket.socket(${family})"`)
      assert.notEqual(result.exitCode, 0, `a ${family} socket was opened`)
      assert.match(result.stderr, /PermissionError|Operation not permitted/)
    }
  })

  it('cannot starve others by flooding connections through the egress proxy', async (t) => {
    const flooder = await create({ network: { denyOut: [ALL_TRAFFIC], allowOut: ['example.com'] } })
    t.after(() => flooder.kill())
    // 600 connections, each sends a request and stays open; count the ones that get answers
    // while all are held, and meanwhile another sandbox must still get through.
    await flooder.files.write('/tmp/flood.py', floodProgram)
    const flood = await flooder.commands.run('python3 /tmp/flood.py', { background: true })
    await assertReaches(open, `http://${labServers.primary}/`)
    const result = await flood.wait()
    const answered = Number(result.stdout.trim())
    assert.ok(answered > 0 && answered <= 256, `${answered} connections of one sandbox were served`)
  })
})

describe('microVM (qemu)', () => {
  it('gives a VM sandbox the same network: internet, rules, updates and ports', async (t) => {
    // debian: the base template in a VM has busybox, and the SDK runs bash.
    const vm = await Sandbox.create('debian', {
      ...server.connection,
      metadata: { 'sandcell.driver': 'qemu' },
      network: { denyOut: [labServers.secondary] },
    })
    t.after(() => vm.kill())
    await assertReaches(vm, `http://${labServers.primary}/`)
    await assertReaches(vm, 'http://example.com/')
    await assertRefused(vm, `http://${labServers.secondary}/`)
    await assertRefused(vm, 'http://10.0.0.1/')
    await vm.updateNetwork({ denyOut: [ALL_TRAFFIC], allowOut: ['example.com'] })
    await assertReaches(vm, 'http://example.com/')
    await assertRefused(vm, `http://${labServers.primary}/`)
    await serve(vm, 'python3 -m http.server 8000 --directory /tmp', 8000)
    const page = await fetchVia('/', { 'e2b-sandbox-id': vm.sandboxId, 'e2b-sandbox-port': '8000' })
    assert.equal(page.status, 200)
    assert.match(page.body, /Directory listing/)
  })
})

describe('leaks', () => {
  /** Slot namespaces, slot links and tracked flows of slot addresses in the lab's host. */
  async function footprint(): Promise<{ netns: number; links: number; flows: number }> {
    const count = async (script: string) =>
      Number((await lab.execInHost('sh', ['-c', `${script} | wc -l`])).stdout.trim())
    return {
      netns: await count('ls /run/netns | grep "^sandcell-"'),
      links: await count('ip -o link | grep -E "scv[0-9]+"'),
      flows: await count('conntrack -L 2>/dev/null | grep "src=10\\.200\\."'),
    }
  }

  it('leaves no namespace, link or tracked flow after 100 create/kill cycles', async () => {
    const before = await footprint()
    for (let i = 0; i < 100; i += 1) {
      const sandbox = await create()
      if (i % 10 === 0) {
        await assertReaches(sandbox, `http://${labServers.primary}/`)
      }
      await sandbox.kill()
    }
    // The pools refill in the background: wait until they are back to their size.
    let now = await footprint()
    for (
      let tries = 0;
      tries < 200 && (now.netns !== before.netns || now.links !== before.links);
      tries += 1
    ) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      now = await footprint()
    }
    assert.equal(now.netns, before.netns)
    assert.equal(now.links, before.links)
    assert.ok(now.flows <= before.flows, `${now.flows} tracked flows, ${before.flows} before`)
  })
})

describe('restart', () => {
  it('keeps DNS, domain rules and ports working for sandboxes adopted after a restart', async () => {
    const restartDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-net-restart-'))
    const options = {
      dataDir: restartDir,
      spawnPrefix: lab.hostSpawnPrefix,
      host: lab.hostAddress,
      env: { SANDCELL_NETWORK_DNS_SERVERS: lab.dnsServer },
    }
    let first: ServeProcess | undefined = await startServeProcess(options)
    let second: ServeProcess | undefined
    try {
      const sandbox = await Sandbox.create({
        ...first.connection,
        network: { denyOut: [ALL_TRAFFIC], allowOut: ['example.com'] },
      })
      await assertReaches(sandbox, 'http://example.com/')
      await first.stop()
      first = undefined
      second = await startServeProcess({ ...options, killSandboxesOnExit: true })
      const adopted = await Sandbox.connect(sandbox.sandboxId, second.connection)
      // The new process's DNS forwarder and proxy listen on other ports: the rules follow.
      await assertReaches(adopted, 'http://example.com/')
      await assertRefused(adopted, `http://${labServers.secondary}/`)
      const resolved = await sh(adopted, 'getent hosts example.com')
      assert.equal(resolved.exitCode, 0, resolved.stderr)
      await adopted.kill()
    } finally {
      await first?.stop()
      await second?.stop()
      rmSync(restartDir, { recursive: true, force: true })
    }
  })
})

describe('CLI', () => {
  it('creates sandboxes with --no-internet, --allow-out and --deny-out', async () => {
    const offline = await sandcell(['sandbox', 'create', '--no-internet'])
    assert.equal(offline.code, 0, offline.stderr)
    const offlineBox = await Sandbox.connect(offline.stdout.trim(), server.connection)
    await assertRefused(offlineBox, `http://${labServers.primary}/`)
    const limited = await sandcell([
      'sandbox',
      'create',
      '--deny-out',
      ALL_TRAFFIC,
      '--allow-out',
      `${labServers.secondary},example.com`,
      '--no-public-traffic',
      '--json',
    ])
    assert.equal(limited.code, 0, limited.stderr)
    const created = JSON.parse(limited.stdout) as { sandboxId: string; trafficAccessToken?: string }
    assert.ok((created.trafficAccessToken ?? '').length > 20, 'the token is shown once')
    const limitedBox = await Sandbox.connect(created.sandboxId, server.connection)
    await assertReaches(limitedBox, `http://${labServers.secondary}/`)
    await assertReaches(limitedBox, 'http://example.com/')
    await assertRefused(limitedBox, `http://${labServers.primary}/`)
    const bad = await sandcell(['sandbox', 'create', '--deny-out', 'example.com'])
    assert.equal(bad.code, 125)
    assert.match(bad.stderr, /invalid denied CIDR example\.com/)
    await Promise.all([offlineBox.kill(), limitedBox.kill()])
  })

  it('runs a one-shot command with --net, and without it on loopback only', async () => {
    const online = await sandcell(
      ['sandbox', 'run', '--net', '--', 'curl', '-sS', '-m', '5', `http://${labServers.primary}/`],
      { inHost: true },
    )
    assert.equal(online.code, 0, online.stderr)
    assert.equal((JSON.parse(online.stdout) as { server: string }).server, labServers.primary)
    const named = await sandcell(
      ['sandbox', 'run', '--net', '--', 'getent', 'hosts', 'example.com'],
      { inHost: true },
    )
    assert.match(named.stdout, /203\.0\.113\.10/)
    const offline = await sandcell(
      ['sandbox', 'run', '--', 'curl', '-sS', '-m', '5', `http://${labServers.primary}/`],
      { inHost: true },
    )
    assert.equal(offline.code, 7, 'curl cannot connect: there is no route out')
    const denied = await sandcell(
      [
        'sandbox',
        'run',
        '--deny-out',
        labServers.primary,
        '--',
        'curl',
        '-sS',
        '-m',
        '5',
        `http://${labServers.primary}/`,
      ],
      { inHost: true },
    )
    assert.equal(denied.code, 7)
    const bad = await sandcell(['sandbox', 'run', '--allow-out', 'exa mple.com', '--', 'true'])
    assert.equal(bad.code, 125)
    assert.match(bad.stderr, /invalid allowed domain/)
  })
})

/** A dependency-free WebSocket echo server (RFC 6455 text frames up to 125 bytes). */
const webSocketEchoServer = `
import { createServer } from 'node:http'
import { createHash } from 'node:crypto'
const server = createServer((req, res) => res.end('ws only'))
server.on('upgrade', (req, socket) => {
  const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
  socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n')
  socket.on('data', (frame) => {
    if ((frame[0] & 0x0f) !== 1) { socket.end(); return }
    const length = frame[1] & 0x7f
    const mask = frame.subarray(2, 6)
    const text = Buffer.from(frame.subarray(6, 6 + length).map((b, i) => b ^ mask[i % 4])).toString()
    const reply = Buffer.from('echo: ' + text)
    socket.write(Buffer.concat([Buffer.from([0x81, reply.length]), reply]))
  })
})
server.listen(Number(process.argv[2]), '0.0.0.0')
`

/** A service that answers with the request headers it saw, as JSON. */
const headersEchoServer = `
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), Handler).serve_forever()
`

const cliPath = new URL('../../packages/cli/src/cli.ts', import.meta.url).pathname

/** The real CLI; `inHost` runs it in the lab's host namespace (local sandboxes with --net). */
function sandcell(
  args: string[],
  { inHost = false }: { inHost?: boolean } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const argv = [
    ...(inHost ? lab.hostSpawnPrefix : []),
    process.execPath,
    '--conditions=sandcell-source',
    '--import',
    'tsx',
    cliPath,
    ...args,
  ]
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), {
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: '',
        SANDCELL_SERVER_URL: server.url,
        SANDCELL_API_KEY: server.apiKey,
        SANDCELL_DATA_DIR: join(dataDir, 'cli'),
        SANDCELL_TEMPLATES_DIR: testTemplatesDir,
        SANDCELL_CGROUP_PARENT: testCgroupParent,
        SANDCELL_NETWORK_DNS_SERVERS: lab.dnsServer,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

/** Holds 600 keep-alive connections to an allowed name; prints how many got an answer. */
const floodProgram = `
import socket, time
held = []
for i in range(600):
    try:
        s = socket.create_connection(('example.com', 80), timeout=2)
        s.sendall(b'GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n')
        held.append(s)
    except OSError:
        pass
answered = 0
for s in held:
    s.settimeout(0.5)
    try:
        if s.recv(16).startswith(b'HTTP/1.1 200'):
            answered += 1
    except OSError:
        pass
print(answered)
`
