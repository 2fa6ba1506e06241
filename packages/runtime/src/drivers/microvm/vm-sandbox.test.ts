/** How a VM's end is explained from the end of its console log. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { endReason, vmCgroupLimits } from './vm-sandbox.js'

describe('microVM sandbox end reasons', () => {
  it('names a kernel panic with its message', () => {
    const log =
      '[    5.1] sysrq: Trigger a crash\n[    5.2] Kernel panic - not syncing: sysrq triggered crash\n'
    assert.equal(
      endReason(log, 'code 0'),
      'guest kernel panicked (code 0): Kernel panic - not syncing: sysrq triggered crash',
    )
  })

  it('names the agent exit that powered the guest off', () => {
    const log = 'sandcell-init: powering off: the agent exited (signal 9)\n'
    assert.equal(endReason(log, 'code 0'), 'sandbox exited: the agent exited (signal 9)')
  })

  it('names a failed guest init', () => {
    const log = 'sandcell-init: fatal: no virtio disk with serial rootfs (No such device)\n'
    assert.match(endReason(log, 'code 0'), /the guest init failed: no virtio disk/)
  })

  it('falls back to how QEMU ended', () => {
    assert.equal(endReason('', 'SIGKILL'), 'sandbox exited: QEMU ended (SIGKILL)')
  })

  it("gives the host cgroup the guest's memory plus QEMU's own", () => {
    const limits = vmCgroupLimits({ memoryMiB: 256, cpus: 1, pids: 64, diskMiB: 512 }, 192)
    assert.equal(limits.memoryBytes, (256 + 192) * 1024 * 1024)
    assert.equal(limits.cpus, 1)
  })
})
