/**
 * The Firecracker API client against a fake of Firecracker's API socket that records every
 * request: paths, methods and JSON bodies as Firecracker's swagger definition has them, 204 on
 * success and 400 with `fault_message` on refusal.
 */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { DriverError } from '@sandcell/shared'
import { FirecrackerApi, FirecrackerApiError, faultMessage } from './firecracker-api.js'
import {
  configureAndBoot,
  firecrackerBootArgs,
  firecrackerDiskSerial,
  tapName,
  vmFiles,
} from './firecracker-vm.js'

interface Recorded {
  method: string
  path: string
  body: unknown
  contentType: string | undefined
}

/** A fake API socket: records requests and answers each with `answer(request)`. */
function fakeFirecracker(
  socketPath: string,
  answer: (request: Recorded) => { status: number; body?: unknown },
): Promise<{ server: Server; requests: Recorded[] }> {
  const requests: Recorded[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      const recorded: Recorded = {
        method: req.method ?? '',
        path: req.url ?? '',
        body: text.length > 0 ? (JSON.parse(text) as unknown) : undefined,
        contentType: req.headers['content-type'],
      }
      requests.push(recorded)
      const { status, body } = answer(recorded)
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' })
      res.end(body === undefined ? undefined : JSON.stringify(body))
    })
  })
  return new Promise((resolve) => server.listen(socketPath, () => resolve({ server, requests })))
}

describe('Firecracker API client', () => {
  let dir = ''
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-fc-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('configures and boots a VM with the request shapes of the API', async () => {
    const socket = join(dir, 'boot.sock')
    const { server, requests } = await fakeFirecracker(socket, () => ({ status: 204 }))
    const vmDir = join(dir, 'vm')
    mkdirSync(vmDir)
    for (const file of [vmFiles.rootfs, vmFiles.sandcell, vmFiles.disk]) {
      writeFileSync(join(vmDir, file), '')
    }
    const api = new FirecrackerApi(socket)
    try {
      await configureAndBoot(api, {
        dir: vmDir,
        shape: {
          vcpus: 2,
          memoryMiB: 1024,
          kernel: '/images/vmlinux',
          initramfs: '/images/initramfs.cpio',
          rootfsImage: '/images/rootfs.erofs',
          sandcellImage: '/images/sandcell.erofs',
        },
        memoryMiB: 256,
        bootArgs: firecrackerBootArgs({ clockNs: 1n, seedHex: 'ab', pids: 64 }),
      })
    } finally {
      await api.close()
      server.close()
    }
    assert.deepEqual(
      requests.map((r) => `${r.method} ${r.path}`),
      [
        'PUT /machine-config',
        'PUT /boot-source',
        'PUT /drives/rootfs',
        'PUT /drives/sandcell',
        'PUT /drives/disk',
        'PUT /network-interfaces/eth0',
        'PUT /vsock',
        'PUT /balloon',
        'PUT /actions',
      ],
    )
    assert.ok(requests.every((r) => r.contentType === 'application/json'))
    const body = (path: string): unknown => requests.find((r) => r.path === path)?.body
    assert.deepEqual(body('/machine-config'), { vcpu_count: 2, mem_size_mib: 1024 })
    const boot = body('/boot-source') as Record<string, string>
    assert.equal(boot.kernel_image_path, '/images/vmlinux')
    assert.equal(boot.initrd_path, '/images/initramfs.cpio')
    assert.match(boot.boot_args ?? '', /reboot=k .*sandcell\.pids=64 /)
    // The guest finds its disks by Firecracker's serials, which it cannot know otherwise.
    for (const [id, file] of [
      ['rootfs', vmFiles.rootfs],
      ['sandcell', vmFiles.sandcell],
      ['disk', vmFiles.disk],
    ] as const) {
      const serial = firecrackerDiskSerial(join(vmDir, file))
      assert.match(serial, /^\d{1,20}$/)
      assert.ok(boot.boot_args?.includes(` sandcell.disk.${id}=${serial}`), id)
    }
    assert.deepEqual(body('/drives/disk'), {
      drive_id: 'disk',
      path_on_host: vmFiles.disk,
      is_root_device: false,
      is_read_only: false,
    })
    assert.deepEqual(body('/drives/rootfs'), {
      drive_id: 'rootfs',
      path_on_host: vmFiles.rootfs,
      is_root_device: false,
      is_read_only: true,
    })
    assert.deepEqual(body('/network-interfaces/eth0'), {
      iface_id: 'eth0',
      host_dev_name: tapName,
      guest_mac: '52:54:00:5a:cd:02',
    })
    assert.deepEqual(body('/vsock'), { guest_cid: 3, uds_path: vmFiles.vsock })
    assert.deepEqual(body('/balloon'), { amount_mib: 768, deflate_on_oom: false })
    assert.deepEqual(body('/actions'), { action_type: 'InstanceStart' })
  })

  it('pauses, snapshots, resumes, loads and resizes with the request shapes of the API', async () => {
    const socket = join(dir, 'life.sock')
    const { server, requests } = await fakeFirecracker(socket, (r) =>
      r.method === 'GET'
        ? { status: 200, body: { id: 'vm', state: 'Running', vmm_version: '1.9.0' } }
        : { status: 204 },
    )
    const api = new FirecrackerApi(socket)
    try {
      await api.pause()
      await api.createSnapshot({
        snapshot_path: '/s/vm.snap',
        mem_file_path: '/s/memory',
        snapshot_type: 'Full',
      })
      await api.resume()
      await api.loadSnapshot({
        snapshot_path: '/s/vm.snap',
        mem_backend: { backend_type: 'File', backend_path: '/s/memory' },
        resume_vm: true,
      })
      await api.patchBalloon(512)
      await api.patchDrive('disk', vmFiles.disk)
      assert.deepEqual(await api.describeInstance(), {
        id: 'vm',
        state: 'Running',
        vmm_version: '1.9.0',
      })
    } finally {
      await api.close()
      server.close()
    }
    assert.deepEqual(
      requests.map((r) => [r.method, r.path, r.body]),
      [
        ['PATCH', '/vm', { state: 'Paused' }],
        [
          'PUT',
          '/snapshot/create',
          { snapshot_path: '/s/vm.snap', mem_file_path: '/s/memory', snapshot_type: 'Full' },
        ],
        ['PATCH', '/vm', { state: 'Resumed' }],
        [
          'PUT',
          '/snapshot/load',
          {
            snapshot_path: '/s/vm.snap',
            mem_backend: { backend_type: 'File', backend_path: '/s/memory' },
            resume_vm: true,
          },
        ],
        ['PATCH', '/balloon', { amount_mib: 512 }],
        ['PATCH', '/drives/disk', { drive_id: 'disk', path_on_host: vmFiles.disk }],
        ['GET', '/', undefined],
      ],
    )
  })

  it("raises Firecracker's fault_message from a 400 with its status", async () => {
    const socket = join(dir, 'fault.sock')
    const { server } = await fakeFirecracker(socket, () => ({
      status: 400,
      body: { fault_message: 'The requested operation is not supported after starting the VM.' },
    }))
    const api = new FirecrackerApi(socket)
    try {
      await assert.rejects(
        api.putMachineConfig({ vcpu_count: 1, mem_size_mib: 128 }),
        (err: unknown) =>
          err instanceof FirecrackerApiError &&
          err instanceof DriverError &&
          err.statusCode === 400 &&
          /PUT \/machine-config failed \(400\): The requested operation is not supported/.test(
            err.message,
          ),
      )
    } finally {
      await api.close()
      server.close()
    }
  })

  it('fails with a DriverError when nothing listens on the socket', async () => {
    const api = new FirecrackerApi(join(dir, 'missing.sock'), { timeoutMs: 2000 })
    try {
      await assert.rejects(api.pause(), (err: unknown) => err instanceof DriverError)
    } finally {
      await api.close()
    }
  })

  it('quotes a body that is not the API error shape', () => {
    assert.equal(faultMessage('{"fault_message":"bad drive"}'), 'bad drive')
    assert.equal(faultMessage('<html>oops</html>'), '<html>oops</html>')
    assert.equal(faultMessage(''), 'no error message')
  })
})
