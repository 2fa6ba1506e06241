/**
 * The shim's Firecracker API refuses what Firecracker refuses, with Firecracker's 400 and
 * `fault_message`: bad shapes (serde's rules), bad values, and requests out of order (pre-boot
 * only, runtime only, a snapshot load after configuring). Behind it, a fake VMM.
 */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, beforeEach, describe, it } from 'node:test'
import {
  FirecrackerController,
  type ApiReply,
  type RunningVm,
  type VmConfig,
} from './api-controller.js'

interface Fake {
  controller: FirecrackerController
  booted: VmConfig[]
  restored: { config: VmConfig; statePath: string; memoryPath: string }[]
  vsockPaths: string[]
  fatal: number
  balloonActive: boolean
}

function fakeVm(fake: Fake): RunningVm {
  return {
    pause: () => Promise.resolve(),
    resume: () => Promise.resolve(),
    setBalloon: () => Promise.resolve(),
    balloonActive: () => Promise.resolve(fake.balloonActive),
    resizeDrive: () => Promise.resolve(),
    save: (fd, memoryPath) => {
      writeSync(fd, 'device state')
      writeFileSync(memoryPath, 'memory')
      return Promise.resolve()
    },
    ctrlAltDel: () => Promise.resolve(),
    vsockTarget: () => undefined,
    exited: new Promise(() => undefined),
  }
}

function createFake(): Fake {
  const fake: Fake = {
    booted: [],
    restored: [],
    vsockPaths: [],
    fatal: 0,
    balloonActive: true,
    controller: undefined as unknown as FirecrackerController,
  }
  fake.controller = new FirecrackerController({
    id: 'test-vm',
    version: '1.16.1',
    backend: {
      identity: 'fake-vmm',
      boot: (config) => {
        fake.booted.push(config)
        return Promise.resolve(fakeVm(fake))
      },
      restore: (config, state, memoryPath) => {
        fake.restored.push({ config, statePath: state.path, memoryPath })
        return Promise.resolve(fakeVm(fake))
      },
    },
    bindVsock: (path) => {
      fake.vsockPaths.push(path)
      return Promise.resolve({ close: () => undefined })
    },
    onFatal: () => {
      fake.fatal++
    },
  })
  return fake
}

function send(fake: Fake, method: string, path: string, body?: unknown): Promise<ApiReply> {
  return fake.controller.handle(method, path, body === undefined ? '' : JSON.stringify(body))
}

async function fault(reply: Promise<ApiReply>): Promise<string> {
  const { status, body } = await reply
  assert.equal(status, 400, `expected a refusal, got ${status} ${JSON.stringify(body)}`)
  return (body as { fault_message: string }).fault_message
}

const deserializing = 'An error occurred when deserializing the json body of a request: '

describe('Firecracker shim API', () => {
  let dir = ''
  let kernel = ''
  let fake: Fake
  const cwd = process.cwd()
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-fc-shim-api-'))
    kernel = join(dir, 'vmlinux')
    writeFileSync(kernel, 'kernel')
    writeFileSync(join(dir, 'disk.ext4'), '')
  })
  after(() => {
    process.chdir(cwd)
    rmSync(dir, { recursive: true, force: true })
  })
  beforeEach(() => {
    process.chdir(dir)
    fake = createFake()
  })

  /** What the driver sends for a cold boot, minus what a test leaves out. */
  async function configure(): Promise<void> {
    for (const [path, body] of [
      ['/machine-config', { vcpu_count: 2, mem_size_mib: 1024 }],
      ['/boot-source', { kernel_image_path: kernel, boot_args: 'console=ttyS0' }],
      [
        '/drives/disk',
        { drive_id: 'disk', path_on_host: 'disk.ext4', is_root_device: false, is_read_only: false },
      ],
      ['/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'tap0' }],
      ['/vsock', { guest_cid: 3, uds_path: 'vsock.sock' }],
      ['/balloon', { amount_mib: 768, deflate_on_oom: false }],
    ] as const) {
      assert.deepEqual(await send(fake, 'PUT', path, body), { status: 204 }, path)
    }
  }

  it('boots what the driver configures and describes the instance', async () => {
    assert.deepEqual((await send(fake, 'GET', '/')).body, {
      id: 'test-vm',
      state: 'Not started',
      vmm_version: '1.16.1',
      app_name: 'Firecracker',
    })
    await configure()
    assert.deepEqual(await send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' }), {
      status: 204,
    })
    const [config] = fake.booted
    assert.equal(config?.machine.vcpu_count, 2)
    assert.deepEqual(
      config.drives.map((d) => d.path_on_host),
      ['disk.ext4'],
    )
    assert.equal(config.balloon?.amount_mib, 768)
    assert.deepEqual(fake.vsockPaths, [join(dir, 'vsock.sock')])
    assert.equal(((await send(fake, 'GET', '/')).body as { state: string }).state, 'Running')
  })

  it('rejects unknown fields, missing fields and wrong types as serde does', async () => {
    assert.equal(
      await fault(
        send(fake, 'PUT', '/machine-config', { vcpu_count: 2, mem_size_mib: 1, cpus: 2 }),
      ),
      `${deserializing}unknown field \`cpus\`, expected one of \`vcpu_count\`, \`mem_size_mib\`, \`smt\`, \`cpu_template\`, \`track_dirty_pages\`, \`huge_pages\`.`,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: 2 })),
      `${deserializing}missing field \`mem_size_mib\`.`,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: '2', mem_size_mib: 1 })),
      `${deserializing}invalid type: string "2", expected u8.`,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: 300, mem_size_mib: 1 })),
      `${deserializing}invalid value: integer \`300\`, expected u8.`,
    )
    assert.equal(
      await fault(send(fake, 'PATCH', '/vm', { state: 'Stopped' })),
      `${deserializing}unknown variant \`Stopped\`, expected \`Paused\` or \`Resumed\`.`,
    )
    assert.match(
      await fault(fake.controller.handle('PUT', '/vsock', '{"guest_cid": 3,')),
      /^An error occurred when deserializing the json body of a request: expected value/,
    )
  })

  it('rejects impossible values with the error of the resource', async () => {
    assert.match(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: 0, mem_size_mib: 128 })),
      /^Machine config error: The number of vCPUs must be greater than 0/,
    )
    assert.match(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 0 })),
      /^Machine config error: The memory size \(MiB\) is either 0/,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/balloon', { amount_mib: 4096, deflate_on_oom: false })),
      'Balloon config error: Amount of pages requested is too large.',
    )
    assert.match(
      await fault(send(fake, 'PUT', '/boot-source', { kernel_image_path: 'no-such-kernel' })),
      /^Boot source error: The kernel file cannot be opened: No such file or directory \(os error 2\)$/,
    )
    assert.equal(
      await fault(
        send(fake, 'PUT', '/drives/disk', {
          drive_id: 'disk',
          path_on_host: 'missing.ext4',
          is_root_device: false,
        }),
      ),
      'Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) missing.ext4',
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/drives/disk', { drive_id: 'disk', is_root_device: false })),
      'Drive config error: Unable to create the virtio block device: Invalid block config.',
    )
  })

  it('rejects ids that do not match the path or are not plain words', async () => {
    const drive = { drive_id: 'disk', path_on_host: 'disk.ext4', is_root_device: false }
    assert.equal(
      await fault(send(fake, 'PUT', '/drives/other', drive)),
      'The id from the path does not match the id from the body!',
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/drives/dis-k', { ...drive, drive_id: 'dis-k' })),
      'API Resource IDs can only contain alphanumeric characters and underscores.',
    )
    assert.equal(await fault(send(fake, 'PUT', '/drives', drive)), 'The ID cannot be empty.')
    assert.equal(
      await fault(
        send(fake, 'PUT', '/network-interfaces/eth1', { iface_id: 'eth0', host_dev_name: 't' }),
      ),
      'The id from the path [eth1] does not match the id from the body [eth0]!',
    )
  })

  it('rejects malformed requests and unknown paths', async () => {
    assert.equal(await fault(send(fake, 'PUT', '/machine-config')), 'Empty PUT request.')
    assert.equal(await fault(send(fake, 'PATCH', '/vm')), 'Empty PATCH request.')
    assert.equal(await fault(send(fake, 'GET', '/', {})), 'GET request cannot have a body.')
    assert.equal(
      await fault(send(fake, 'PUT', '/frobnicate', {})),
      'Invalid request method and/or path: PUT frobnicate.',
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/snapshot', {})),
      'Missing snapshot operation type.',
    )
  })

  it('refuses runtime requests before the start and pre-boot requests after it', async () => {
    const before = 'The requested operation is not supported before starting the microVM.'
    assert.equal(await fault(send(fake, 'PATCH', '/vm', { state: 'Paused' })), before)
    assert.equal(await fault(send(fake, 'PATCH', '/balloon', { amount_mib: 1 })), before)
    assert.equal(
      await fault(
        send(fake, 'PATCH', '/drives/disk', { drive_id: 'disk', path_on_host: 'disk.ext4' }),
      ),
      before,
    )
    assert.equal(
      await fault(
        send(fake, 'PUT', '/snapshot/create', { snapshot_path: 's', mem_file_path: 'm' }),
      ),
      before,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' })),
      'Start microvm error: Cannot start microvm without kernel configuration.',
    )
    await configure()
    await send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' })
    const afterStart = 'The requested operation is not supported after starting the microVM.'
    assert.equal(
      await fault(send(fake, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 128 })),
      afterStart,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' })),
      afterStart,
    )
    assert.equal(
      await fault(send(fake, 'PUT', '/vsock', { guest_cid: 3, uds_path: 'other.sock' })),
      afterStart,
    )
  })

  it('snapshots only a paused VM and refuses a balloon the guest has not taken', async () => {
    await configure()
    await send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' })
    const params = { snapshot_path: 'vm.snap', mem_file_path: 'memory', snapshot_type: 'Full' }
    assert.equal(
      await fault(send(fake, 'PUT', '/snapshot/create', params)),
      'Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running',
    )
    fake.balloonActive = false
    assert.equal(
      await fault(send(fake, 'PATCH', '/balloon', { amount_mib: 512 })),
      'Balloon update error: Balloon: Device not activated yet.',
    )
    fake.balloonActive = true
    assert.equal(
      await fault(send(fake, 'PATCH', '/balloon', { amount_mib: 2048 })),
      'Balloon update error: Balloon: Requested memory should be less than 2048MiB',
    )
    assert.deepEqual(await send(fake, 'PATCH', '/balloon', { amount_mib: 512 }), { status: 204 })
    assert.deepEqual(await send(fake, 'PATCH', '/vm', { state: 'Paused' }), { status: 204 })
    assert.deepEqual(await send(fake, 'PUT', '/snapshot/create', params), { status: 204 })
    assert.match(readFileSync(join(dir, 'vm.snap'), 'utf8'), /device state$/)
    assert.equal(readFileSync(join(dir, 'memory'), 'utf8'), 'memory')
  })

  it('loads a snapshot only into a fresh process, its relative paths from there', async () => {
    await configure()
    await send(fake, 'PUT', '/actions', { action_type: 'InstanceStart' })
    await send(fake, 'PATCH', '/vm', { state: 'Paused' })
    await send(fake, 'PUT', '/snapshot/create', {
      snapshot_path: 'vm.snap',
      mem_file_path: 'memory',
    })
    const clone = join(dir, 'clone')
    mkdirSync(clone)
    process.chdir(clone)
    writeFileSync('disk.ext4', '')
    const load = {
      snapshot_path: join(dir, 'vm.snap'),
      mem_backend: { backend_type: 'File', backend_path: join(dir, 'memory') },
      resume_vm: true,
    }
    const configured = createFake()
    await send(configured, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 128 })
    assert.equal(
      await fault(send(configured, 'PUT', '/snapshot/load', load)),
      'Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.',
    )
    assert.equal(
      await fault(
        send(createFake(), 'PUT', '/snapshot/load', { ...load, mem_file_path: 'memory' }),
      ),
      `${deserializing}too many fields: either \`mem_backend\` or \`mem_file_path\` exclusively is required.`,
    )
    const fresh = createFake()
    assert.deepEqual(await send(fresh, 'PUT', '/snapshot/load', load), { status: 204 })
    const [restored] = fresh.restored
    assert.deepEqual(
      restored?.config.drives.map((d) => d.path_on_host),
      ['disk.ext4'],
    )
    assert.equal(restored.memoryPath, join(dir, 'memory'))
    assert.deepEqual(fresh.vsockPaths, [join(clone, 'vsock.sock')])
    assert.equal(((await send(fresh, 'GET', '/')).body as { state: string }).state, 'Running')
    assert.equal(
      await fault(send(fresh, 'PUT', '/snapshot/load', load)),
      'The requested operation is not supported after starting the microVM.',
    )
  })

  it('takes a failed load as fatal, as Firecracker does', async () => {
    const reply = fault(
      send(fake, 'PUT', '/snapshot/load', {
        snapshot_path: 'no-such.snap',
        mem_backend: { backend_type: 'File', backend_path: 'memory' },
      }),
    )
    assert.equal(
      await reply,
      'Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)',
    )
    assert.equal(fake.fatal, 1)
  })
})
