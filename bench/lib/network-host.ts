/**
 * The half of the network benchmark that must run inside the lab's host namespace (where the
 * server's slots live): slot build, release and hand-over times, a rules update, and a sandbox
 * port reached directly at its slot address beside the same through the server's proxy.
 * Usage: network-host.ts slots <dnsServer> <runs> | ports <proxyUrl> <sandboxId> <address> <port> <runs>
 * Prints one JSON line of samples.
 */
import { request } from 'node:http'
import { createSilentLogger } from '@sandcell/shared'
import {
  closedPolicy,
  createSandboxNetwork,
  networkConfigSchema,
  openPolicy,
  removeSlot,
} from '@sandcell/network'

const [mode = '', ...args] = process.argv.slice(2)

function get(options: {
  host: string
  port: number
  path: string
  headers?: Record<string, string>
}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ ...options, agent: false }, (res) => {
      let bytes = 0
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length
      })
      res.on('end', () => resolve(bytes))
    })
    req.on('error', reject)
    req.end()
  })
}

async function timed(runs: number, fn: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < 3; i += 1) {
    await fn()
  }
  const samples: number[] = []
  for (let i = 0; i < runs; i += 1) {
    const started = performance.now()
    await fn()
    samples.push(performance.now() - started)
  }
  return samples
}

if (mode === 'slots') {
  const [dnsServer = '', runsText = '50'] = args
  const runs = Number(runsText)
  const cold = createSandboxNetwork({
    config: networkConfigSchema.parse({
      dnsServers: [dnsServer],
      poolSize: 0,
      subnet: '10.202.0.0/16',
    }),
    log: createSilentLogger(),
  })
  await cold.start()
  const build: number[] = []
  const release: number[] = []
  const update: number[] = []
  for (let i = 0; i < runs; i += 1) {
    let started = performance.now()
    const slot = await cold.acquire('container', { sandboxId: `bench-${i}` })
    build.push(performance.now() - started)
    started = performance.now()
    await cold.setPolicy(slot, i % 2 === 0 ? closedPolicy : openPolicy)
    update.push(performance.now() - started)
    started = performance.now()
    await removeSlot(slot.addresses)
    release.push(performance.now() - started)
    cold.release(slot)
  }
  await cold.close()
  const warm = createSandboxNetwork({
    config: networkConfigSchema.parse({
      dnsServers: [dnsServer],
      poolSize: 4,
      subnet: '10.203.0.0/16',
    }),
    log: createSilentLogger(),
  })
  const handOver: number[] = []
  for (let i = 0; i < runs; i += 1) {
    await warm.waitReady()
    const started = performance.now()
    const slot = await warm.acquire('container', { sandboxId: `bench-${i}` })
    handOver.push(performance.now() - started)
    warm.release(slot)
  }
  await warm.close()
  process.stdout.write(`${JSON.stringify({ build, release, update, handOver })}\n`)
} else if (mode === 'ports') {
  const [proxyUrl = '', sandboxId = '', address = '', portText = '', runsText = '200'] = args
  const port = Number(portText)
  const runs = Number(runsText)
  const proxy = new URL(proxyUrl)
  const viaProxy = (path: string) =>
    get({
      host: proxy.hostname,
      port: Number(proxy.port),
      path,
      headers: { 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': String(port) },
    })
  const direct = (path: string) => get({ host: address, port, path })
  const directSmall = await timed(runs, () => direct('/1k'))
  const proxySmall = await timed(runs, () => viaProxy('/1k'))
  const mib = 100
  const throughput = async (fetchBig: () => Promise<number>): Promise<number[]> =>
    (await timed(3, fetchBig)).map((ms) => mib / (ms / 1000))
  const directBig = await throughput(() => direct('/100m'))
  const proxyBig = await throughput(() => viaProxy('/100m'))
  process.stdout.write(`${JSON.stringify({ directSmall, proxySmall, directBig, proxyBig })}\n`)
} else {
  throw new Error(`unknown mode ${mode}`)
}
