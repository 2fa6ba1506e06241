/**
 * Sandbox networking, offline in a network lab: slot build, release and hand-over (goals ≤ 20,
 * ≤ 30 and ≤ 1 ms), create → first command with networking beside a server without it (delta
 * goal ≤ 2 ms), a rules update, 200 networked sandboxes at once, the port-exposure proxy beside a
 * direct connection to the sandbox's address (1 KiB requests, 100 MiB downloads), and how fast
 * a denied connection fails. Usage: npm run bench -- network [runs=50]
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox } from 'e2b'
import { waitForPool } from './lib/setup.js'
import { startNetworkLab, startServeProcess, type NetworkLab } from '@sandcell/test-utils'
import { percentile, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 50)
const hostScript = new URL('lib/network-host.ts', import.meta.url).pathname
const nodeArgs = ['--conditions=sandcell-source', '--import', 'tsx', hostScript]

async function inHost<T>(lab: NetworkLab, args: string[]): Promise<T> {
  const result = await lab.execInHost(process.execPath, [...nodeArgs, ...args], {
    timeoutMs: 600_000,
  })
  if (result.code !== 0) {
    throw new Error(`network-host ${args[0]} failed:\n${result.stderr}`)
  }
  return JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as T
}

/** Create → first `commands.run('true')` from the warm pool, `runs` times. */
async function createToRun(url: string, connection: object): Promise<number[]> {
  const samples: number[] = []
  for (let i = 0; i < runs + 3; i += 1) {
    await waitForPool(url)
    const started = performance.now()
    const sandbox = await Sandbox.create(connection)
    await sandbox.commands.run('true')
    if (i >= 3) {
      samples.push(performance.now() - started)
    }
    await sandbox.kill()
  }
  return samples
}

const portService = `
import { createServer } from 'node:http'
const kib = Buffer.alloc(1024, 97)
const mib = Buffer.alloc(1024 * 1024, 0)
createServer((req, res) => {
  if (req.url === '/100m') {
    res.writeHead(200, { 'content-length': 100 * mib.length })
    let left = 100
    const more = () => {
      while (left > 0) { left -= 1; if (!res.write(mib)) { res.once('drain', more); return } }
      res.end()
    }
    more()
    return
  }
  res.writeHead(200, { 'content-length': kib.length }).end(kib)
}).listen(8000, '0.0.0.0')
`

const lab = await startNetworkLab()
const dataDirs: string[] = []
try {
  const slots = await inHost<Record<'build' | 'release' | 'update' | 'handOver', number[]>>(lab, [
    'slots',
    lab.dnsServer,
    String(runs),
  ])

  const serve = async (env: Record<string, string>) => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-net-'))
    dataDirs.push(dataDir)
    return startServeProcess({
      dataDir,
      spawnPrefix: lab.hostSpawnPrefix,
      host: lab.hostAddress,
      killSandboxesOnExit: true,
      env: { SANDCELL_NETWORK_DNS_SERVERS: lab.dnsServer, ...env },
    })
  }

  const offline = await serve({ SANDCELL_NETWORK_ENABLED: 'false' })
  const withoutNetwork = await createToRun(offline.url, offline.connection)
  await offline.stop()

  const server = await serve({ SANDCELL_NETWORK_POOL_SIZE: '16' })
  const withNetwork = await createToRun(server.url, server.connection)

  const service = await Sandbox.create({ ...server.connection, timeoutMs: 600_000 })
  await service.files.write('/tmp/service.mjs', portService)
  await service.commands.run('node /tmp/service.mjs', { background: true })
  await service.commands.run(
    'for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && exit 0; sleep 0.05; done; exit 1',
  )
  const address = (
    await service.commands.run("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
  ).stdout.trim()
  const ports = await inHost<
    Record<'directSmall' | 'proxySmall' | 'directBig' | 'proxyBig', number[]>
  >(lab, ['ports', server.url, service.sandboxId, address, '8000', String(Math.max(runs, 200))])

  const denied = await Sandbox.create({ ...server.connection, allowInternetAccess: false })
  const probe = await denied.commands.run(
    `python3 -c "
import socket, time, json
samples = []
for i in range(${runs}):
    started = time.perf_counter()
    try:
        socket.create_connection(('203.0.113.10', 80), timeout=5)
    except OSError:
        pass
    samples.append((time.perf_counter() - started) * 1000)
print(json.dumps(samples))
"`,
  )
  const deniedMs = JSON.parse(probe.stdout) as number[]
  await denied.kill()

  const update: number[] = []
  for (let i = 0; i < runs; i += 1) {
    const started = performance.now()
    await service.updateNetwork(i % 2 === 0 ? { denyOut: ['203.0.113.11'] } : {})
    update.push(performance.now() - started)
  }
  await service.kill()

  const concurrent = 200
  const started = performance.now()
  const created = await Promise.allSettled(
    Array.from({ length: concurrent }, () =>
      Sandbox.create({ ...server.connection, timeoutMs: 600_000 }),
    ),
  )
  const allS = (performance.now() - started) / 1000
  const live = created.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const reached = await Promise.all(
    live
      .filter((_, i) => i % 20 === 0)
      .map((sandbox) =>
        sandbox.commands.run('curl -s -o /dev/null -m 5 http://203.0.113.10/').then(
          () => true,
          () => false,
        ),
      ),
  )
  await Promise.allSettled(live.map((sandbox) => sandbox.kill()))
  await server.stop()

  const p = (samples: number[], at: number) =>
    percentile(
      [...samples].sort((a, b) => a - b),
      at,
    ).toFixed(2)
  const mbps = (samples: number[]) => summarize('', samples).p50.toFixed(0)
  const without = summarize(
    'Sandbox.create() → first run, networking off (baseline)',
    withoutNetwork,
  )
  const withSummary = summarize('Sandbox.create() → first run, networking on', withNetwork)
  report(
    'network',
    [
      summarize('slot hand-over from the pool (in-process)', slots.handOver),
      summarize('slot build (namespace, veth, addresses, table)', slots.build),
      summarize('slot release (namespace, tracked flows)', slots.release),
      summarize('slot rules replaced (nft transaction)', slots.update),
      summarize('updateNetwork through the SDK (204 after the kernel has the rules)', update),
      withSummary,
      summarize('port 8000, 1 KiB GET, direct to the slot address', ports.directSmall),
      summarize('port 8000, 1 KiB GET, through the server proxy', ports.proxySmall),
      summarize('denied connection fails (connect() → refused)', deniedMs),
    ],
    without,
    [
      `create delta with networking: ${(withSummary.p50 - without.p50).toFixed(2)} ms at p50 (goal ≤ 2 ms)`,
      `1 KiB through the proxy vs direct: p50 ${p(ports.proxySmall, 50)} vs ${p(ports.directSmall, 50)} ms, p99 ${p(ports.proxySmall, 99)} vs ${p(ports.directSmall, 99)} ms`,
      `100 MiB download: direct ${mbps(ports.directBig)} MB/s, through the proxy ${mbps(ports.proxyBig)} MB/s`,
      `${concurrent} networked sandboxes at once: ${live.length} created in ${allS.toFixed(1)} s; ${reached.filter(Boolean).length}/${reached.length} sampled reached the lab internet`,
    ],
  )
} finally {
  await lab.close()
  for (const dir of dataDirs) {
    rmSync(dir, { recursive: true, force: true })
  }
}
