import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  DriverError,
  FailedPreconditionError,
  ResourceExhaustedError,
  SandboxDeadError,
  createSilentLogger,
  newSandboxId,
} from '@sandcell/shared'
import type { AgentConnection } from '@sandcell/envd-client'
import type {
  DestroyReason,
  Sandbox,
  SandboxLimits,
  SandboxSnapshot,
  SandboxState,
  SandboxStats,
} from './driver.js'
import { guardSandbox } from './guarded-sandbox.js'
import { SandboxEvents, type SandboxEvent } from './sandbox-events.js'

const limits: SandboxLimits = { memoryMiB: 256, cpus: 1, pids: 64, diskMiB: 256 }

/** A scripted inner sandbox: the unit under test is the guard, not a driver. */
class ScriptedSandbox implements Sandbox {
  readonly id = newSandboxId()
  readonly info = {
    id: this.id,
    driver: 'container' as const,
    template: 'base',
    agentSocket: '/x',
    limits,
    labels: {},
    createdAt: new Date(),
  }
  state: SandboxState = 'running'
  calls: string[] = []
  destroyCount = 0
  failNext: Error | undefined
  gate: Promise<void> = Promise.resolve()
  readonly ended: Promise<DestroyReason>
  endNow!: (reason: DestroyReason) => void

  constructor() {
    this.ended = new Promise((resolve) => {
      this.endNow = resolve
    })
  }

  async #call(name: string): Promise<void> {
    this.calls.push(`${name}:start`)
    await this.gate
    this.calls.push(`${name}:end`)
    if (this.failNext !== undefined) {
      const err = this.failNext
      this.failNext = undefined
      throw err
    }
  }

  connect(): AgentConnection {
    return { socketPath: '/x' } as AgentConnection
  }
  async pause(): Promise<void> {
    await this.#call('pause')
    this.state = 'paused'
  }
  async resume(): Promise<void> {
    await this.#call('resume')
    this.state = 'running'
  }
  setLimits(): Promise<void> {
    return this.#call('setLimits')
  }
  setLabels(): Promise<void> {
    return this.#call('setLabels')
  }
  setNetwork(): Promise<void> {
    return this.#call('setNetwork')
  }
  async stats(): Promise<SandboxStats> {
    await this.#call('stats')
    return {
      memoryBytes: 1,
      memoryPeakBytes: 1,
      memoryLimitBytes: 1,
      cpuUsageUs: 0,
      pids: 1,
      oomKills: 0,
      diskUsedBytes: 0,
      diskTotalBytes: 1,
    }
  }
  async snapshot(options: { dir: string }): Promise<SandboxSnapshot> {
    await this.#call('snapshot')
    return { driver: 'container', template: 'base', diskMiB: 256, dir: options.dir, memory: false }
  }
  async shutDown(options: { dir: string }): Promise<SandboxSnapshot> {
    // As a driver's: its processes end before the disk is saved, and it destroys itself.
    this.endNow({ reason: 'sandbox exited (SIGKILL)' })
    try {
      await this.#call('shutDown')
    } finally {
      await this.destroy({ reason: 'shut down' })
    }
    return { driver: 'container', template: 'base', diskMiB: 256, dir: options.dir, memory: false }
  }
  destroy(reason: DestroyReason = { reason: 'x' }): Promise<void> {
    this.destroyCount += 1
    this.state = 'destroyed'
    this.endNow(reason)
    return Promise.resolve()
  }
}

function setup() {
  const inner = new ScriptedSandbox()
  const events: SandboxEvent[] = []
  const bus = new SandboxEvents(createSilentLogger())
  bus.on((event) => events.push(event))
  const sandbox = guardSandbox(inner, { log: createSilentLogger(), events: bus })
  return { inner, sandbox, events }
}

describe('guardSandbox', () => {
  it('serialises calls: the second starts only after the first ends', async () => {
    const { inner, sandbox } = setup()
    let release!: () => void
    inner.gate = new Promise((resolve) => {
      release = resolve
    })
    const first = sandbox.stats()
    const second = sandbox.setLimits(limits)
    await new Promise((resolve) => setImmediate(resolve))
    assert.deepEqual(inner.calls, ['stats:start'])
    release()
    await Promise.all([first, second])
    assert.deepEqual(inner.calls, ['stats:start', 'stats:end', 'setLimits:start', 'setLimits:end'])
  })

  it('destroys the sandbox when a call fails and rejects every later call with the first cause', async () => {
    const { inner, sandbox, events } = setup()
    const failure = new DriverError('freezer broke')
    inner.failNext = failure
    await assert.rejects(sandbox.pause(), DriverError)
    assert.equal(inner.destroyCount, 1)
    assert.equal(sandbox.state, 'destroyed')
    await assert.rejects(
      sandbox.stats(),
      (err: unknown) => err instanceof SandboxDeadError && err.cause === failure,
    )
    assert.throws(() => sandbox.connect(), SandboxDeadError)
    assert.equal(
      inner.calls.filter((c) => c.startsWith('stats')).length,
      0,
      'a dead sandbox is not touched',
    )
    assert.deepEqual(
      events.map((e) => e.type),
      ['destroyed'],
    )
  })

  it('keeps the sandbox when a resource outside it ran out (host disk during a snapshot)', async () => {
    const { inner, sandbox } = setup()
    inner.failNext = new ResourceExhaustedError('no space on the host')
    await assert.rejects(sandbox.snapshot({ dir: '/x' }), ResourceExhaustedError)
    assert.equal(inner.destroyCount, 0)
    assert.equal(sandbox.state, 'running')
  })

  it('makes destroy idempotent and tells listeners once', async () => {
    const { inner, sandbox, events } = setup()
    await Promise.all([sandbox.destroy(), sandbox.destroy()])
    await sandbox.destroy()
    assert.equal(inner.destroyCount, 1)
    assert.equal(events.filter((e) => e.type === 'destroyed').length, 1)
    assert.equal((await sandbox.ended).reason, 'destroyed')
  })

  it('refuses to pause a paused sandbox without destroying it, and resume is a no-op when running', async () => {
    const { inner, sandbox, events } = setup()
    await sandbox.resume()
    assert.deepEqual(inner.calls, [])
    await sandbox.pause()
    await assert.rejects(sandbox.pause(), FailedPreconditionError)
    assert.throws(() => sandbox.connect(), FailedPreconditionError)
    assert.equal(sandbox.state, 'paused')
    await sandbox.resume()
    assert.deepEqual(
      events.map((e) => e.type),
      ['paused', 'resumed'],
    )
  })

  it('cleans up a sandbox that ends on its own', async () => {
    const { inner, sandbox, events } = setup()
    inner.endNow({ reason: 'agent crashed' })
    const reason = await sandbox.ended
    assert.equal(reason.reason, 'agent crashed')
    assert.equal(inner.destroyCount, 1)
    assert.equal(sandbox.state, 'destroyed')
    assert.equal(events.at(-1)?.type, 'destroyed')
  })

  it('shuts a sandbox down: its disk saved, then destroyed once, the end no surprise', async () => {
    const { inner, sandbox, events } = setup()
    const saved = await sandbox.shutDown({ dir: '/saved' })
    assert.equal(saved.dir, '/saved')
    assert.equal(saved.memory, false)
    assert.equal(sandbox.state, 'destroyed')
    assert.equal((await sandbox.ended).reason, 'shut down, its disk kept')
    assert.deepEqual(
      events.map((e) => e.type),
      ['destroyed'],
    )
    await assert.rejects(sandbox.stats(), SandboxDeadError)
    assert.ok(inner.destroyCount >= 1)
  })

  it('destroys a sandbox whose shut-down failed, even for a resource outside it', async () => {
    const { inner, sandbox, events } = setup()
    inner.failNext = new ResourceExhaustedError('no space on the host')
    await assert.rejects(sandbox.shutDown({ dir: '/saved' }), ResourceExhaustedError)
    assert.equal(sandbox.state, 'destroyed')
    assert.match((await sandbox.ended).reason, /^shutDown failed: no space on the host/)
    assert.deepEqual(
      events.map((e) => e.type),
      ['destroyed'],
    )
  })

  it('keeps working when a listener throws', async () => {
    const inner = new ScriptedSandbox()
    const bus = new SandboxEvents(createSilentLogger())
    const seen: string[] = []
    bus.on(() => {
      throw new Error('bad listener')
    })
    bus.on((event) => seen.push(event.type))
    const sandbox = guardSandbox(inner, { log: createSilentLogger(), events: bus })
    await sandbox.pause()
    assert.deepEqual(seen, ['paused'])
  })
})
