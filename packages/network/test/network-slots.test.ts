// Network slots for real, inside a network lab's host namespace: 1,000 slot hand-overs and
// releases leave nothing behind (namespaces, links, connection tracking), an address's next
// tenant inherits no rules or flows of the last one, and start-up reclaims what a killed
// process left.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  startNetworkLab,
  type LeakSnapshot,
  type NetworkLab,
} from '@sandcell/test-utils'

const fixture = new URL('fixtures/slots-in-host.ts', import.meta.url).pathname
const nodeArgs = ['--conditions=sandcell-source', '--import', 'tsx', fixture]

let lab: NetworkLab
let baseline: LeakSnapshot

async function scenario(
  name: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<Record<string, unknown>> {
  const result = await lab.execInHost(
    'env',
    [
      ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      process.execPath,
      ...nodeArgs,
      name,
      lab.dnsServer,
      ...args,
    ],
    { timeoutMs: 300_000 },
  )
  assert.equal(result.code, 0, `${name} failed:\n${result.stderr}`)
  const line = result.stdout.trim().split('\n').at(-1) ?? '{}'
  return JSON.parse(line) as Record<string, unknown>
}

/** What of ours exists in the lab's host namespace: slot links and conntrack flows to slots. */
async function footprint(): Promise<{ links: string[]; flows: number; netns: string[] }> {
  const links = (await lab.execInHost('ip', ['-o', 'link'])).stdout
    .split('\n')
    .filter((line) => /\bscv\d+/.test(line))
  const flows = (
    await lab.execInHost('sh', [
      '-c',
      'conntrack -L 2>/dev/null | grep -c "src=10\\.20[01]\\." || true',
    ])
  ).stdout.trim()
  const netns = (
    await lab.execInHost('sh', ['-c', 'ls /run/netns 2>/dev/null | grep "^sandcell-" || true'])
  ).stdout
    .split('\n')
    .filter(Boolean)
  return { links, flows: Number(flows), netns }
}

/**
 * The footprint once the kernel's namespace cleanup has run: a removed namespace takes its
 * veth pair with it asynchronously.
 */
async function settled(
  expected: Awaited<ReturnType<typeof footprint>>,
): Promise<Awaited<ReturnType<typeof footprint>>> {
  const deadline = Date.now() + 15_000
  let now = await footprint()
  while (JSON.stringify(now) !== JSON.stringify(expected) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    now = await footprint()
  }
  return now
}

describe('network slots', { timeout: 600_000 }, () => {
  before(async () => {
    baseline = snapshotLeaks()
    lab = await startNetworkLab()
  })

  after(async () => {
    await lab?.close()
    await assertNoLeaks(baseline)
  })

  it('hands over and releases 1,000 slots, some carrying traffic, leaving nothing', async () => {
    const before = await footprint()
    const result = await scenario('cycles', [], { CYCLES: '1000' })
    assert.equal(result.count, 1000)
    assert.equal(result.withTraffic, 20)
    assert.ok(
      Number(result.handOverP50Ms) < 5,
      `median hand-over ${String(result.handOverP50Ms)} ms`,
    )
    assert.deepEqual(await settled(before), before)
  })

  it("gives an address's next tenant none of the last one's rules or flows", async () => {
    const result = await scenario('reuse', ['10.201.0.0/28'])
    assert.equal(result.sameAddress, true, JSON.stringify(result))
    assert.equal(result.firstReached, '200')
    assert.ok(Number(result.trackedWhileUsed) > 0, 'the first tenant had tracked flows')
    assert.equal(result.trackedAfter, 0)
    assert.equal(result.denyRulesOfNext, false)
    assert.equal(result.nextReaches, true)
  })

  it("reclaims the slots of a process killed hard, and leaves a live one's alone", async () => {
    const orphan = spawn(
      lab.hostSpawnPrefix[0] ?? 'nsenter',
      [...lab.hostSpawnPrefix.slice(1), process.execPath, ...nodeArgs, 'orphan', lab.dnsServer],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    await new Promise<void>((resolve, reject) => {
      orphan.stdout.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('"ready":true')) {
          resolve()
        }
      })
      orphan.once('exit', (code) => reject(new Error(`orphan exited ${code}`)))
    })
    const held = (await footprint()).netns
    assert.equal(held.length, 2, 'the orphan holds its pool')
    await scenario('reclaim')
    assert.deepEqual((await footprint()).netns, held, 'a live owner keeps its slots')
    orphan.kill('SIGKILL')
    await new Promise((resolve) => orphan.once('exit', resolve))
    await scenario('reclaim')
    const after = await settled({ links: [], flows: 0, netns: [] })
    assert.deepEqual(after.netns, [])
    assert.deepEqual(after.links, [])
  })
})
