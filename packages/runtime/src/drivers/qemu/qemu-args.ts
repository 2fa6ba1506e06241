/**
 * The QEMU `microvm` command line and the guest kernel command line. Pure: one function of the
 * VM's shape, so that a template VM, its clones and restored snapshots get exactly the same
 * device line (migration matches devices by id and order).
 */

import { vmTapName } from '@sandcell/network'

export type Accelerator = 'kvm' | 'tcg'

/** What every VM booted from, or restored into, one machine shape shares. */
export interface VmShape {
  accel: Accelerator
  vcpus: number
  /** Guest RAM (-m): the most memory a sandbox can be given; the balloon takes the rest. */
  memoryMiB: number
  /** Uncompressed kernel (ELF with a PVH note) and the initramfs. */
  kernel: string
  initramfs: string
  /** The template's read-only root filesystem image. */
  rootfsImage: string
  /** The read-only image with node, its libraries and the agent. */
  sandcellImage: string
  /** TCG translation cache, MiB. */
  tcgCacheMiB: number
}

/** Per-VM host paths. */
export interface VmPaths {
  disk: string
  log: string
  qmpSocket: string
  ctlSocket: string
}

/**
 * Where guest RAM lives: always a file. A template VM shares its file (the snapshot then holds
 * no RAM); clones map the template's file privately (copy-on-write); every other VM maps an
 * empty sparse file privately, which reads as zeros like plain RAM but is never backed by
 * transparent huge pages: a restore writing scattered pages into THP-backed RAM would cost
 * 2 MiB of host memory per page written.
 */
export interface VmMemory {
  path: string
  shared: boolean
}

/** A fixed MAC: it is part of the saved device state. */
export const guestMac = '52:54:00:5a:cd:01'

export interface QemuArgsOptions {
  shape: VmShape
  paths: VmPaths
  memory: VmMemory
  /** Kernel command line (ignored by QEMU on a restore, but kept identical). */
  cmdline: string
  /** Start with `-incoming defer` to receive a saved state. */
  incoming: boolean
}

function memoryObject(memory: VmMemory, sizeMiB: number): string {
  return `memory-backend-file,id=mem,size=${sizeMiB}M,mem-path=${escapeOption(memory.path)},share=${memory.shared ? 'on' : 'off'}`
}

/** QEMU option values use `,` as separator; a literal comma is written twice. */
export function escapeOption(value: string): string {
  return value.replaceAll(',', ',,')
}

/** No default devices, no config files, no display; a guest reboot ends QEMU. */
const bareMachine = [
  '-nodefaults',
  '-no-user-config',
  '-nographic',
  '-display',
  'none',
  '-no-reboot',
]

/**
 * The arguments of the VM that tells whether KVM can run the guest: the kernel and initramfs
 * under KVM, powering off as soon as init runs, its console into `logPath`.
 */
export function buildKvmProbeArgs(options: {
  kernel: string
  initramfs: string
  logPath: string
}): string[] {
  return [
    '-M',
    'microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=off',
    '-accel',
    'kvm',
    '-cpu',
    'host',
    '-m',
    '128M',
    '-smp',
    '1',
    ...bareMachine,
    '-kernel',
    options.kernel,
    '-initrd',
    options.initramfs,
    '-append',
    'console=ttyS0 quiet panic=-1 reboot=t sandcell.probe=1',
    '-serial',
    `file:${options.logPath}`,
  ]
}

/** The full argument list after the binary name. */
export function buildQemuArgs({
  shape,
  paths,
  memory,
  cmdline,
  incoming,
}: QemuArgsOptions): string[] {
  const args = [
    '-name',
    'sandcell',
    '-M',
    // ACPI on: Debian's kernel finds virtio-mmio devices only through the DSDT. No RTC: the
    // host sets the clock (kernel command line at boot, the ctl port after a restore).
    'microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=mem',
    '-object',
    memoryObject(memory, shape.memoryMiB),
    '-m',
    `${shape.memoryMiB}M`,
    '-smp',
    String(shape.vcpus),
    ...(shape.accel === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host']
      : ['-accel', `tcg,thread=multi,tb-size=${shape.tcgCacheMiB}`, '-cpu', 'max']),
    ...bareMachine,
    // No new privileges, no obsolete or resource-control syscalls; spawning stays allowed for
    // `exec:` migration (QEMU 7.2 cannot migrate to a file).
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny',
    '-kernel',
    shape.kernel,
    '-initrd',
    shape.initramfs,
    '-append',
    cmdline,
    '-chardev',
    `file,id=console,path=${escapeOption(paths.log)},append=on`,
    '-serial',
    'chardev:console',
    '-drive',
    `if=none,id=rootfs,file=${escapeOption(shape.rootfsImage)},format=raw,readonly=on`,
    '-device',
    'virtio-blk-device,drive=rootfs,serial=rootfs',
    '-drive',
    `if=none,id=sandcell,file=${escapeOption(shape.sandcellImage)},format=raw,readonly=on`,
    '-device',
    'virtio-blk-device,drive=sandcell,serial=sandcell',
    '-drive',
    `if=none,id=disk,file=${escapeOption(paths.disk)},format=raw,discard=unmap`,
    '-device',
    'virtio-blk-device,drive=disk,serial=disk',
    // The TAP in the VM's network namespace: what the guest may reach is that namespace's
    // business (a network slot's rules, or nothing), never QEMU's.
    '-netdev',
    `tap,id=net,ifname=${vmTapName},script=no,downscript=no`,
    '-device',
    `virtio-net-device,netdev=net,mac=${guestMac}`,
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=ctl,path=${escapeOption(paths.ctlSocket)},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=ctl,name=sandcell.ctl',
    '-device',
    'virtio-balloon-device',
    '-qmp',
    `unix:${escapeOption(paths.qmpSocket)},server=on,wait=off`,
  ]
  if (incoming) {
    args.push('-incoming', 'defer', '-S')
  }
  return args
}

export interface KernelCmdlineOptions {
  accel: Accelerator
  /** Host TSC frequency for TCG guests (their TSC is the host's); skips a fragile calibration. */
  tscKhz?: number
  clockNs: bigint
  seedHex: string
  pids: number
}

/** The guest kernel's command line, with what sandcell-init reads from it. */
export function buildKernelCmdline(options: KernelCmdlineOptions): string {
  const parts = [
    'console=ttyS0',
    'quiet',
    // A panic resets the VM, and QEMU runs with -no-reboot: the VM ends and the host notices.
    'panic=-1',
    'reboot=t',
    // Balloon pages are never touched, so the host never backs them; zeroing every page the
    // kernel hands out also costs much under TCG.
    'init_on_alloc=0',
    '8250.nr_uarts=1',
    'cryptomgr.notests',
    'random.trust_cpu=on',
  ]
  if (options.accel === 'tcg') {
    // Under TCG the PIT calibration races the emulation and may fail on a busy host, after
    // which the kernel hangs; the TSC ticks at the host's rate.
    parts.push('tsc=reliable', 'no_timer_check')
    if (options.tscKhz !== undefined) {
      parts.push(`tsc_early_khz=${options.tscKhz}`)
    }
  }
  parts.push(
    `sandcell.clock=${options.clockNs}`,
    `sandcell.seed=${options.seedHex}`,
    `sandcell.pids=${options.pids}`,
  )
  return parts.join(' ')
}

/**
 * The host's TSC frequency in kHz from /proc/cpuinfo, when the TSC is constant (then `cpu MHz`
 * is its rate); undefined otherwise.
 */
export function parseTscKhz(cpuinfo: string): number | undefined {
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? []
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]
  if (!flags.includes('constant_tsc') || mhz === undefined) {
    return undefined
  }
  const khz = Math.round(Number(mhz) * 1000)
  return Number.isFinite(khz) && khz > 0 ? khz : undefined
}
