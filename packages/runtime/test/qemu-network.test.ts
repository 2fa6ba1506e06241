/**
 * Sandbox networking on the qemu driver, in a network lab: a guest behind its slot's TAP reaches
 * the lab internet and its DNS with no re-addressing after the template restore, is refused
 * private ranges and the host, follows new rules at once, and serves a port the host reaches
 * at the slot address; a copy restored from its snapshot does the same in a slot of its own, a
 * VM without networking reaches nothing, a restarted owner adopts a VM and its slot; nothing
 * is left afterwards.
 */
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  startNetworkLab,
  testTemplatesDir,
  type LabEvent,
  type LeakSnapshot,
  type NetworkLab,
} from '@sandcell/test-utils'

const fixture = new URL('fixtures/qemu-network-in-host.ts', import.meta.url).pathname
const cgroupParent = `sandcell-test-qemu-net-${process.pid}`

/** What the fixture prints: one command's result per check, and facts about the sandboxes. */
interface Check {
  code: number
  out: string
  ms: number
}
type Outcome = Partial<Record<string, Check>> & {
  error?: string
  netns?: (string | undefined)[]
  address?: string
  restoredAddress?: string
  exposed?: string
  restoredExposed?: string
  hostServiceHits?: number
  egressClosed?: { denyCidrs: string[] }
  offlineInfo?: unknown
  offlineSetNetwork?: string
  restored?: string
  adopted?: string[]
  adoptedInfo?: { address: string } | null
  createMs?: number
  restoreMs?: number
  offlineCreateMs?: number
}

/** curl's exit code when its deadline passed: what a dropped (not refused) connection gives. */
const curlTimedOut = 28

let lab: NetworkLab
let baseline: LeakSnapshot
let dataDir: string
/** Whether the adopt phase ran, and so destroyed what the create phase left running. */
let adopted = false

function isHttpTo(path: string): (event: LabEvent) => boolean {
  return (event) => event.event === 'http' && event.path === path
}

/** Runs one phase of the fixture in the lab's host namespace; its stderr lines as diagnostics. */
async function runPhase(
  phase: 'create' | 'adopt',
  diagnostic: (message: string) => void = () => undefined,
): Promise<Outcome> {
  const result = await lab.execInHost(
    'env',
    [
      `SANDCELL_TEMPLATES_DIR=${testTemplatesDir}`,
      `SANDCELL_CGROUP_PARENT=${cgroupParent}`,
      process.execPath,
      '--conditions=sandcell-source',
      '--import',
      'tsx',
      fixture,
      phase,
      lab.dnsServer,
      dataDir,
    ],
    { timeoutMs: 600_000 },
  )
  assert.equal(result.code, 0, result.stderr)
  for (const line of result.stderr.split('\n').filter((text) => text.length > 0)) {
    diagnostic(`${phase}: ${line.slice(0, 400)}`)
  }
  return JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as Outcome
}

describe('qemu driver networking', { timeout: 900_000 }, () => {
  before(async () => {
    baseline = snapshotLeaks()
    lab = await startNetworkLab()
    dataDir = mkdtempSync(join(tmpdir(), 'sandcell-test-qemu-net-'))
  })

  after(async () => {
    if (lab !== undefined && !adopted) {
      // The test stopped between the phases: what the first left running goes now.
      await runPhase('adopt').catch(() => undefined)
    }
    await lab?.close()
    rmSync(dataDir, { recursive: true, force: true })
    await assertNoLeaks(baseline, { scope: [dataDir, cgroupParent] })
  })

  it('gives restored, copied, offline and adopted VMs the network their rules say', async (t) => {
    const diagnostic = (message: string): void => t.diagnostic(message)
    const outcome = await runPhase('create', diagnostic)
    t.diagnostic(
      `create ${outcome.createMs} ms, restore ${outcome.restoreMs} ms, offline create ${outcome.offlineCreateMs} ms`,
    )
    // Adopted even when the create phase failed: the adopt phase cleans up after it.
    const later = await runPhase('adopt', diagnostic)
    adopted = true
    assert.equal(outcome.error, undefined, outcome.error)
    assert.equal(later.error, undefined, later.error)
    const check = (name: string): Check => {
      const found = outcome[name]
      assert.ok(found !== undefined && typeof found === 'object', `no result for ${name}`)
      return found
    }
    const refusedFast = (name: string): void => {
      const { code, out, ms } = check(name)
      assert.notEqual(code, 0, `${name} got through: ${out}`)
      assert.notEqual(code, curlTimedOut, `${name} timed out instead of being refused: ${out}`)
      assert.ok(ms < 3000, `${name} took ${ms} ms to fail`)
    }

    // A, from the template snapshot: the guest's fixed address works behind a new slot.
    assert.match(outcome.address ?? '', /^10\.204\./)
    assert.equal(check('internet').out, '200', check('internet').out)
    const seen = await lab.waitForEvent(isHttpTo('/from-vm-a'), 5000)
    assert.equal(seen?.client, lab.uplinkAddress, 'the guest left through the host NAT')
    assert.match(check('dns').out, /^203\.0\.113\.10\s+example\.com/)
    assert.equal(check('resolvConf').out, 'nameserver 10.0.2.2')
    // /proc/net/route: a default route (destination 0) through 10.0.2.2 (little-endian hex).
    assert.match(check('route').out, /eth0\s+00000000\s+0202000A/)
    refusedFast('private')
    refusedFast('tapGateway')
    refusedFast('slotGateway')
    assert.equal(outcome.hostServiceHits, 0, "the host's own services stay out of reach")
    assert.equal(check('serverStarted').code, 0, check('serverStarted').out)
    assert.equal(outcome.exposed, 'guest-page\n')
    assert.deepEqual(outcome.egressClosed?.denyCidrs, ['0.0.0.0/0'])
    refusedFast('closed')
    assert.equal(check('reopened').out, '200', 'setNetwork opened it again')

    // B, restored from A's snapshot: its own slot and address, the same guest address inside.
    assert.match(outcome.restoredAddress ?? '', /^10\.204\./)
    assert.notEqual(outcome.restoredAddress, outcome.address)
    refusedFast('restoredClosed')
    assert.equal(outcome.restoredExposed, 'guest-page\n', "A's listener, served at B's address")
    assert.equal(check('domainAllowed').out, '200', check('domainAllowed').out)
    const viaProxy = await lab.waitForEvent(isHttpTo('/from-vm-b-domain'), 5000)
    assert.ok(viaProxy?.event === 'http', 'the allowed request reached the internet')
    assert.equal(viaProxy.host, 'example.com')
    assert.notEqual(check('domainDenied').out, '200', check('domainDenied').out)
    assert.equal(await lab.waitForEvent(isHttpTo('/from-vm-b-denied'), 500), undefined)

    // C, without networking: no slot, nothing reachable, no rules to change.
    assert.equal(outcome.offlineInfo, null)
    refusedFast('offline')
    assert.match(outcome.offlineSetNetwork ?? '', /no network of its own/)
    assert.equal(await lab.waitForEvent(isHttpTo('/from-vm-c'), 500), undefined)

    // B adopted by a new process, which reloads its rules with its own DNS forwarder.
    assert.deepEqual(later.adopted, [outcome.restored], 'only B outlived the first process')
    assert.equal(later.adoptedInfo?.address, outcome.restoredAddress)
    const adoptedCheck = (name: string): Check => {
      const found = later[name]
      assert.ok(found !== undefined && typeof found === 'object', `no result for ${name}`)
      return found
    }
    assert.match(adoptedCheck('adoptedDns').out, /^203\.0\.113\.11\s+www\.example\.com/)
    assert.equal(adoptedCheck('adoptedInternet').out, '200', adoptedCheck('adoptedInternet').out)

    // Every slot is gone with its VM: namespace, owner file and host link.
    assert.equal(outcome.netns?.length, 2)
    for (const name of outcome.netns ?? []) {
      assert.match(name ?? '', /^sandcell-\d+$/, 'the persisted state names the slot')
      assert.ok(!existsSync(`/run/netns/${name}`), `${name} is left`)
      assert.ok(!existsSync(`/run/sandcell/net/${name}.json`), `${name}'s owner file is left`)
    }
    const links = await lab.execInHost('ip', ['-o', 'link'])
    assert.doesNotMatch(links.stdout, /scv\d+/, 'the slot links are gone with the VMs')
  })
})
