/** Which driver the routing driver sends each create to, and how it merges the others' answers. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError, createLogger, newSandboxId } from '@sandcell/shared'
import type { Driver, DriverKind, ProbeResult, Sandbox, SandboxSpec } from './driver.js'
import { createRoutingDriver } from './routing-driver.js'
import { SandboxEvents } from './sandbox-events.js'

const log = createLogger({ level: 'silent' })
const limits = { memoryMiB: 256, cpus: 1, pids: 64, diskMiB: 256 }

/** A driver that records the specs it is asked to create and answers with a stub sandbox. */
function fakeDriver(
  kind: DriverKind,
  options: { usable?: boolean; adoptFails?: boolean } = {},
): Driver & { created: SandboxSpec[]; prepared: string[]; events: SandboxEvents } {
  const events = new SandboxEvents(log)
  const created: SandboxSpec[] = []
  const prepared: string[] = []
  const sandbox = (spec: SandboxSpec): Sandbox =>
    ({ id: newSandboxId(), info: { driver: kind, template: spec.template } }) as unknown as Sandbox
  return {
    kind,
    events,
    created,
    prepared,
    onEvent: (listener) => events.on(listener),
    probe: () => {
      const result: ProbeResult =
        options.usable === false
          ? { usable: false, details: {}, reason: `${kind} cannot run` }
          : { usable: true, details: { version: '1' } }
      return Promise.resolve(result)
    },
    templates: () => Promise.resolve([{ name: 'base', ready: true, description: kind }]),
    prepareTemplate: (name) => {
      prepared.push(name)
      return Promise.resolve()
    },
    create: (spec) => {
      created.push(spec)
      return Promise.resolve(sandbox(spec))
    },
    adopt: () =>
      options.adoptFails === true
        ? Promise.reject(new Error('no cgroups'))
        : Promise.resolve([sandbox({ template: 'base', limits })]),
    close: () => Promise.resolve(),
  }
}

describe('routing driver', () => {
  it("sends a create to the spec's driver, else the template's, else the default", async () => {
    const container = fakeDriver('container')
    const qemu = fakeDriver('qemu')
    const routing = createRoutingDriver({
      drivers: [container, qemu],
      templateDrivers: { debian: 'qemu' },
      log,
    })
    assert.equal(routing.kind, 'container')
    await routing.create({ template: 'base', limits })
    await routing.create({ template: 'debian', limits })
    await routing.create({ template: 'base', limits, driver: 'qemu' })
    await routing.create({ template: 'debian', limits, driver: 'container' })
    assert.deepEqual(
      container.created.map((s) => s.template),
      ['base', 'debian'],
    )
    assert.deepEqual(
      qemu.created.map((s) => s.template),
      ['debian', 'base'],
    )
  })

  it('starts a sandbox from a snapshot on the driver that took the snapshot', async () => {
    const container = fakeDriver('container')
    const qemu = fakeDriver('qemu')
    const routing = createRoutingDriver({ drivers: [container, qemu], log })
    const fromSnapshot = {
      driver: 'qemu' as const,
      template: 'base',
      diskMiB: 256,
      dir: '/snap',
      memory: true,
    }
    await routing.create({ template: 'base', limits, fromSnapshot })
    assert.equal(qemu.created.length, 1)
    await assert.rejects(
      routing.create({ template: 'base', limits, fromSnapshot, driver: 'container' }),
      InvalidArgumentError,
    )
  })

  it('rejects a driver that is not configured, at creation and in the template map', async () => {
    const routing = createRoutingDriver({ drivers: [fakeDriver('container')], log })
    await assert.rejects(
      routing.create({ template: 'base', limits, driver: 'firecracker' }),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        /firecracker driver, which is not configured/.test(err.message),
    )
    assert.throws(
      () =>
        createRoutingDriver({
          drivers: [fakeDriver('container')],
          templateDrivers: { debian: 'qemu' },
          log,
        }),
      /templateDrivers\.debian asks for the qemu driver/,
    )
  })

  it('prepares a template for the driver that will run it', async () => {
    const container = fakeDriver('container')
    const qemu = fakeDriver('qemu')
    const routing = createRoutingDriver({
      drivers: [container, qemu],
      defaultDriver: 'qemu',
      log,
    })
    await routing.prepareTemplate('debian')
    await routing.prepareTemplate('base', { driver: 'container' })
    assert.deepEqual(qemu.prepared, ['debian'])
    assert.deepEqual(container.prepared, ['base'])
  })

  it("adopts from every driver, past one that fails, and relays every driver's events", async () => {
    const container = fakeDriver('container')
    const qemu = fakeDriver('qemu', { adoptFails: true })
    const routing = createRoutingDriver({ drivers: [container, qemu], log })
    assert.equal((await routing.adopt()).length, 1)
    const heard: string[] = []
    routing.onEvent((event) => heard.push(event.type))
    const sandbox = await qemu.create({ template: 'base', limits })
    qemu.events.emit({ type: 'paused', sandbox })
    assert.deepEqual(heard, ['paused'])
  })

  it("is usable when its default driver is, with every driver's verdict in the details", async () => {
    const routing = createRoutingDriver({
      drivers: [fakeDriver('container'), fakeDriver('firecracker', { usable: false })],
      log,
    })
    const probe = await routing.probe()
    assert.equal(probe.usable, true)
    assert.equal(probe.details.firecracker, 'unusable: firecracker cannot run')
    assert.equal(probe.details['container.version'], '1')
  })
})
