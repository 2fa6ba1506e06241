import assert from 'node:assert/strict'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, it } from 'node:test'
import { Gauge, Registry } from 'prom-client'
import type { Driver, Sandbox } from '@sandcell/runtime'
import { createSilentLogger } from '@sandcell/shared'
import { SqliteStore, type SandboxRecord } from '../store/sqlite-store.js'
import { sandboxRecord } from './fake-sandboxes.js'
import { KeyedMutex } from './keyed-mutex.js'
import { LiveSandboxes } from './live-sandboxes.js'
import { pausedDiskDir } from './paused-disks.js'
import { reconcileAfterRestart } from './restart-reconciliation.js'
import { SandboxTimeouts } from './sandbox-timeouts.js'

/** A sandbox the runtime adopts: running, with no network to reload. */
function adoptedSandbox(id: string): Sandbox {
  return {
    id,
    state: 'running',
    info: { agentSocket: `/run/${id}.sock`, labels: {} },
  } as unknown as Sandbox
}

const pausedOnDisk: Pick<SandboxRecord, 'state' | 'filesystemPause'> = {
  state: 'paused',
  filesystemPause: { template: 'base', egress: null },
}

describe('restart reconciliation', () => {
  let dataDir: string
  let store: SqliteStore
  let live: LiveSandboxes

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'sandcell-reconcile-'))
    store = new SqliteStore(':memory:')
    const gauge = new Gauge({
      name: 'g',
      help: 'h',
      labelNames: ['state'],
      registers: [new Registry()],
    })
    live = new LiveSandboxes({ store, gauge, log: createSilentLogger() })
  })

  afterEach(() => {
    store.close()
    rmSync(dataDir, { recursive: true, force: true })
  })

  const keptDisk = (id: string): string => {
    const dir = pausedDiskDir(dataDir, id)
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'disk.ext4'), '')
    return dir
  }

  const reconcile = (runtime: Sandbox[]): Promise<void> =>
    reconcileAfterRestart({
      driver: { adopt: () => Promise.resolve(runtime) } as unknown as Driver,
      store,
      live,
      timeouts: new SandboxTimeouts({
        live,
        mutex: new KeyedMutex(),
        log: createSilentLogger(),
        defaultTimeoutS: 300,
        maxTimeoutS: 3600,
        actions: { pause: () => Promise.resolve(), kill: () => Promise.resolve() },
      }),
      log: createSilentLogger(),
      dataDir,
    })

  it('keeps a sandbox paused on its filesystem: nothing runs, its disk waits', async () => {
    const asleep = sandboxRecord(pausedOnDisk)
    store.insertSandbox(asleep)
    const disk = keptDisk(asleep.id)
    await reconcile([])
    const entry = live.require(asleep.id)
    assert.equal(entry.sandbox, undefined)
    assert.deepEqual(entry.record, asleep)
    assert.equal(entry.target.state, 'paused')
    assert.ok(existsSync(disk))
  })

  it('drops a sandbox paused on its filesystem whose disk is gone', async () => {
    const lost = sandboxRecord(pausedOnDisk)
    store.insertSandbox(lost)
    await reconcile([])
    assert.equal(live.get(lost.id), undefined)
    assert.equal(store.getSandbox(lost.id), undefined)
  })

  it('takes the runtime as the truth when a boot from the disk got as far as a sandbox', async () => {
    const booting = sandboxRecord(pausedOnDisk)
    store.insertSandbox(booting)
    const disk = keptDisk(booting.id)
    await reconcile([adoptedSandbox(booting.id)])
    const { record, sandbox } = live.require(booting.id)
    assert.equal(record.state, 'running')
    assert.equal(record.filesystemPause, null)
    assert.ok(sandbox !== undefined)
    assert.equal(store.getSandbox(booting.id)?.filesystemPause, null)
    assert.equal(existsSync(disk), false)
  })

  it('removes kept disks that no paused sandbox owns', async () => {
    const orphan = keptDisk('sb_orphan')
    const running = sandboxRecord()
    store.insertSandbox(running)
    const stray = keptDisk(running.id)
    await reconcile([adoptedSandbox(running.id)])
    assert.equal(existsSync(orphan), false)
    assert.equal(existsSync(stray), false)
    assert.equal(live.require(running.id).record.state, 'running')
  })
})
