import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  buildKernelCmdline,
  buildQemuArgs,
  escapeOption,
  parseTscKhz,
  type VmShape,
} from './qemu-args.js'

const shape: VmShape = {
  accel: 'tcg',
  vcpus: 2,
  memoryMiB: 1024,
  kernel: '/images/vmlinux',
  initramfs: '/images/initramfs.cpio',
  rootfsImage: '/images/rootfs,odd.erofs',
  sandcellImage: '/images/sandcell.erofs',
  tcgCacheMiB: 64,
}
const paths = {
  disk: '/sb/disk.ext4',
  log: '/sb/vm.log',
  qmpSocket: '/sb/qmp.sock',
  ctlSocket: '/sb/ctl.sock',
}

describe('qemu command line', () => {
  it('gives a template VM and its clones the same device line', () => {
    const template = buildQemuArgs({
      shape,
      paths,
      memory: { path: '/t/memory', shared: true },
      cmdline: 'x',
      incoming: false,
    })
    const clone = buildQemuArgs({
      shape,
      paths,
      memory: { path: '/t/memory', shared: false },
      cmdline: 'x',
      incoming: true,
    })
    assert.deepEqual(
      clone.slice(0, template.length).filter((a) => !a.startsWith('memory-backend')),
      template.filter((a) => !a.startsWith('memory-backend')),
    )
    assert.deepEqual(clone.slice(template.length), ['-incoming', 'defer', '-S'])
    assert.ok(
      template.includes('memory-backend-file,id=mem,size=1024M,mem-path=/t/memory,share=on'),
    )
    assert.ok(clone.includes('memory-backend-file,id=mem,size=1024M,mem-path=/t/memory,share=off'))
  })

  it('uses TCG with a bounded translation cache, or KVM with the host CPU', () => {
    const tcg = buildQemuArgs({
      shape,
      paths,
      memory: { path: '/m', shared: false },
      cmdline: 'x',
      incoming: false,
    })
    assert.equal(tcg[tcg.indexOf('-accel') + 1], 'tcg,thread=multi,tb-size=64')
    const kvm = buildQemuArgs({
      shape: { ...shape, accel: 'kvm' },
      paths,
      memory: { path: '/m', shared: false },
      cmdline: 'x',
      incoming: false,
    })
    assert.equal(kvm[kvm.indexOf('-accel') + 1], 'kvm')
    assert.equal(kvm[kvm.indexOf('-cpu') + 1], 'host')
  })

  it('attaches the guest to the TAP of its namespace, never to a user network of its own', () => {
    const args = buildQemuArgs({
      shape,
      paths,
      memory: { path: '/m', shared: false },
      cmdline: 'x',
      incoming: false,
    })
    assert.ok(args.includes('tap,id=net,ifname=tap0,script=no,downscript=no'), args.join(' '))
    assert.ok(!args.some((arg) => arg.startsWith('user,')), 'no slirp: its own way out')
  })

  it('escapes commas in paths', () => {
    assert.equal(escapeOption('/a,b'), '/a,,b')
    const args = buildQemuArgs({
      shape,
      paths,
      memory: { path: '/m', shared: false },
      cmdline: 'x',
      incoming: false,
    })
    assert.ok(args.some((a) => a.includes('file=/images/rootfs,,odd.erofs,format=raw,readonly=on')))
  })

  it('puts the clock, seed and pids limit on the kernel command line, TSC rate under TCG', () => {
    const tcg = buildKernelCmdline({
      accel: 'tcg',
      tscKhz: 2095993,
      clockNs: 1700000000000000000n,
      seedHex: 'ab',
      pids: 256,
    })
    assert.match(tcg, /panic=-1/)
    assert.match(tcg, /tsc_early_khz=2095993/)
    assert.match(tcg, /sandcell\.clock=1700000000000000000 sandcell\.seed=ab sandcell\.pids=256$/)
    const kvm = buildKernelCmdline({ accel: 'kvm', clockNs: 1n, seedHex: 'ab', pids: 1 })
    assert.doesNotMatch(kvm, /tsc/)
  })

  it('reads the TSC rate only from a host with a constant TSC', () => {
    assert.equal(parseTscKhz('flags\t\t: fpu tsc constant_tsc\ncpu MHz\t\t: 2095.993\n'), 2095993)
    assert.equal(parseTscKhz('cpu MHz\t\t: 2095.993\nflags\t\t: fpu tsc\n'), undefined)
  })
})
