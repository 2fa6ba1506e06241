/**
 * Sandbox networking on the qemu driver, in a network lab: the guest behind its slot's TAP
 * reaches the lab internet and its DNS with no re-addressing after the template restore, is
 * refused private ranges and the host, follows new rules at once, and serves a port the host
 * reaches at the slot address; nothing is left afterwards.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  startNetworkLab,
  testTemplatesDir,
  type LeakSnapshot,
  type NetworkLab,
} from '@sandcell/test-utils'

const fixture = new URL('fixtures/qemu-network-in-host.ts', import.meta.url).pathname
const cgroupParent = `sandcell-test-qemu-net-${process.pid}`

let lab: NetworkLab
let baseline: LeakSnapshot
let dataDir: string

describe('qemu driver networking', { timeout: 900_000 }, () => {
  before(async () => {
    baseline = snapshotLeaks()
    lab = await startNetworkLab()
    dataDir = mkdtempSync(join(tmpdir(), 'sandcell-test-qemu-net-'))
  })

  after(async () => {
    await lab?.close()
    rmSync(dataDir, { recursive: true, force: true })
    await assertNoLeaks(baseline, { scope: [dataDir, cgroupParent] })
  })

  it('reaches the internet and DNS from a restored guest, refuses the rest, serves a port', async () => {
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
        lab.dnsServer,
        dataDir,
      ],
      { timeoutMs: 800_000 },
    )
    assert.equal(result.code, 0, result.stderr)
    const outcome = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as {
      error?: string
      address?: string
      exposed?: string
      closedMs?: number
    } & Record<string, { code: number; out: string }>
    assert.equal(outcome.error, undefined, outcome.error)
    const check = (name: string) => outcome[name] as { code: number; out: string }
    assert.match(outcome.address ?? '', /^10\.204\./)
    assert.equal(check('internet').code, 0, check('internet').out)
    assert.match(check('internet').out, /200/)
    assert.match(check('dns').out, /203\.0\.113\.10/)
    assert.notEqual(check('private').code, 0)
    assert.notEqual(check('gateway').code, 0)
    assert.notEqual(check('gateway').code, 28, 'the gateway refuses at once, no timeout')
    assert.equal(outcome.exposed?.trim(), 'guest-page')
    assert.notEqual(check('closed').code, 0, 'the new rules refused the connection')
    assert.ok((outcome.closedMs ?? Infinity) < 3000, `refusal took ${outcome.closedMs ?? '?'} ms`)
    const links = await lab.execInHost('ip', ['-o', 'link'])
    assert.doesNotMatch(links.stdout, /scv\d+/, 'the slot link is gone with the VM')
  })
})
