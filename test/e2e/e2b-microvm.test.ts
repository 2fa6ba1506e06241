/**
 * The server's driver choice through the official e2b SDK: a create whose metadata names the
 * qemu driver gets a microVM (its own kernel), a bad driver name is a 400 naming the key, and a
 * plain create stays a container. The guest images are the ones the qemu driver tests build.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Sandbox } from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

const imagesDir = process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images'

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({
    dataDir,
    env: { SANDCELL_MICROVM_IMAGES_DIR: imagesDir },
    killSandboxesOnExit: true,
  })
})

after(async () => {
  try {
    const stopped = await server?.stop({ timeoutMs: 60_000 })
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

describe('driver per sandbox', { timeout: 300_000 }, () => {
  it('runs a sandbox on the qemu driver when its metadata asks for it', async () => {
    const vm = await Sandbox.create('debian', {
      ...server.connection,
      metadata: { 'sandcell.driver': 'qemu', app: 'vm-test' },
      requestTimeoutMs: 240_000,
    })
    try {
      const kernel = await vm.commands.run('uname -r', { requestTimeoutMs: 60_000 })
      assert.notEqual(kernel.stdout.trim(), release(), 'the guest has a kernel of its own')
      await vm.files.write('/home/user/in-vm.txt', 'written in the VM')
      assert.equal(await vm.files.read('/home/user/in-vm.txt'), 'written in the VM')
      const listed = Sandbox.list({
        ...server.connection,
        query: { metadata: { app: 'vm-test' } },
      })
      assert.deepEqual(
        (await listed.nextItems()).map((s) => s.sandboxId),
        [vm.sandboxId],
      )
    } finally {
      await vm.kill()
    }
  })

  it('keeps containers as the default and refuses an unknown driver by name', async () => {
    const container = await Sandbox.create(server.connection)
    try {
      const kernel = await container.commands.run('uname -r')
      assert.equal(kernel.stdout.trim(), release(), 'a container shares the host kernel')
    } finally {
      await container.kill()
    }
    await assert.rejects(
      Sandbox.create({ ...server.connection, metadata: { 'sandcell.driver': 'vmware' } }),
      /metadata\.sandcell\.driver must be container, qemu or firecracker, not "vmware"/,
    )
  })
})
