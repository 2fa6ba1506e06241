/**
 * The server's driver choice through the official e2b SDK: a create whose metadata names the
 * qemu driver gets a microVM (its own kernel, file metadata on its overlay root), a bad driver
 * name is a 400 naming the key, and a plain create stays a container; a VM paused keeping its
 * files only boots again on them; a template built with the SDK (by containers) starts on qemu
 * as built, its start command already running. The guest images are the ones the qemu driver
 * tests build.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Sandbox, Template } from 'e2b'
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
      // File metadata is xattrs on the guest's overlay root: new files, and template files
      // copied up from the erofs image to the ext4 disk.
      const tagged = await vm.files.write('/home/user/tagged.txt', 'x', {
        metadata: { on: 'qemu' },
      })
      assert.deepEqual(tagged.metadata, { on: 'qemu' })
      await vm.commands.run(
        `python3 -c "import os; os.setxattr('/etc/debian_version', 'user.e2b.layer', b'lower')"`,
        { user: 'root', requestTimeoutMs: 60_000 },
      )
      assert.deepEqual((await vm.files.getInfo('/etc/debian_version')).metadata, { layer: 'lower' })
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

describe('pause kinds on the qemu driver', { timeout: 600_000 }, () => {
  it('pauses a VM keeping its files only: connect boots it again on them', async (t) => {
    const vm = await Sandbox.create('debian', {
      ...server.connection,
      metadata: { 'sandcell.driver': 'qemu' },
      requestTimeoutMs: 240_000,
    })
    t.after(() => vm.kill())
    const run = async (sandbox: Sandbox, command: string): Promise<string> =>
      (await sandbox.commands.run(command, { requestTimeoutMs: 60_000 })).stdout.trim()
    await vm.files.write('/home/user/on-disk.txt', 'written in the VM')
    const sleeper = await vm.commands.run('sleep 1000', { background: true, timeoutMs: 0 })
    await sleeper.disconnect()
    const booted = await run(vm, 'cat /proc/sys/kernel/random/boot_id')

    assert.equal(await vm.pause({ keepMemory: false, requestTimeoutMs: 120_000 }), true)
    assert.equal((await vm.getInfo()).state, 'paused')
    const woken = await Sandbox.connect(vm.sandboxId, {
      ...server.connection,
      requestTimeoutMs: 240_000,
    })
    assert.notEqual(await run(woken, 'uname -r'), release(), 'still a VM')
    assert.equal(await woken.files.read('/home/user/on-disk.txt'), 'written in the VM')
    assert.notEqual(await run(woken, 'cat /proc/sys/kernel/random/boot_id'), booted, 'a new boot')
    const processes = await woken.commands.list()
    assert.ok(
      processes.every((p) => p.pid !== sleeper.pid || !p.cmd.includes('sleep')),
      JSON.stringify(processes),
    )
  })
})

describe('built templates on the qemu driver', { timeout: 600_000 }, () => {
  it('starts a template built with the SDK as built, its start command running', async (t) => {
    // Debian: the SDK runs every command with bash, and `base` in a VM has busybox's shell only.
    const template = Template()
      .fromTemplate('debian')
      .setUser('root')
      .runCmd('mkdir -p /opt/app && echo built > /opt/app/built.txt')
      .setEnvs({ GREETING: 'hi' })
      .setWorkdir('/opt/app')
      .setStartCmd(
        'echo "$GREETING $(id -un) $(pwd)" >> /tmp/started; exec sleep 100000',
        'test -s /tmp/started',
      )
    await Template.build(template, 'vm-started', server.connection)
    const vm = await Sandbox.create('vm-started', {
      ...server.connection,
      metadata: { 'sandcell.driver': 'qemu' },
      envs: { EXTRA: 'mine' },
      requestTimeoutMs: 240_000,
    })
    t.after(() => vm.kill())
    const run = async (command: string): Promise<string> =>
      (await vm.commands.run(command, { requestTimeoutMs: 60_000 })).stdout.trim()
    assert.notEqual(await run('uname -r'), release(), 'the guest has a kernel of its own')
    assert.equal(await run('cat /opt/app/built.txt'), 'built')
    assert.equal(
      await run('echo "$GREETING $EXTRA"'),
      'hi mine',
      "the template's env, then the create's",
    )
    assert.equal(await run('pwd'), '/opt/app')
    assert.equal(await run('whoami'), 'root')
    assert.equal(await run('cat /tmp/started'), 'hi root /opt/app', 'the start command ran once')
    assert.equal(await run('ps -o args | grep -c "[s]leep 100000"'), '1')
  })
})
