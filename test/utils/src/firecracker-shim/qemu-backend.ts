/**
 * The guest behind the shim's Firecracker API: QEMU's `microvm` machine with what Firecracker
 * would give the VM (its kernel, initrd and command line, virtio-blk drives whose serial is
 * Firecracker's disk id, virtio-net on the named TAP, the balloon, an i8042 whose reset ends
 * the VM, the serial console on stdout). RAM is a shared file known only to this process, so
 * that a snapshot is QEMU's device state (`x-ignore-shared`) plus a copy of that file, and a
 * restore copies the memory file in: the file the API names is never written, as under
 * Firecracker's private mapping. Firecracker's vsock becomes virtio-serial ports (see
 * vsock-relay.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import {
  closeSync,
  createReadStream,
  ftruncateSync,
  openSync,
  readFileSync,
  readdirSync,
  realpathSync,
  statSync,
  unlinkSync,
} from 'node:fs'
import type { Writable } from 'node:stream'
import type { RunningVm, VmConfig, VmmBackend } from './api-controller.js'
import { Qmp } from './qmp.js'

export interface QemuBackendOptions {
  qemuBinary: string
  accel: 'kvm' | 'tcg'
  /** Guest vsock ports the guest serves, each as the virtio-serial port of that name. */
  vsockPorts: ReadonlyMap<number, string>
  /**
   * A `cgroup.procs` file QEMU and the shim's copies move into before they allocate anything:
   * the guest's RAM and TCG's code cache are then not charged to the memory cgroup sized for
   * Firecracker's few MiB (cgroup v1 lets the other controllers stay as they are).
   */
  vmmMemoryCgroup?: string
  /** Called once QEMU has ended: the guest stopped (or QEMU died). */
  onExit(code: number): void
}

const defaultKernelCmdline =
  'reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce'
/** Far above any disk: saving is bounded by the disk, not QEMU's default cap of 128 MiB/s. */
const unlimitedBandwidth = 2 ** 40

/** The QEMU build and accelerator: a snapshot loads only into the same (microvm is not versioned). */
export function qemuIdentity(qemuBinary: string, accel: string): string {
  const path = realpathSync(findOnPath(qemuBinary))
  const stat = statSync(path)
  return `${path}:${stat.size}:${Math.round(stat.mtimeMs)}:${accel}`
}

function findOnPath(command: string): string {
  if (command.includes('/')) {
    return command
  }
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    try {
      statSync(`${dir}/${command}`)
      return `${dir}/${command}`
    } catch {
      // Not in this directory.
    }
  }
  throw new Error(`${command} is not on PATH`)
}

/** QEMU options use `,` as separator; a literal comma is written twice. */
function option(value: string): string {
  return value.replaceAll(',', ',,')
}

/** Firecracker's disk id: the backing file's st_dev, st_rdev and st_ino, cut to 20 bytes. */
export function firecrackerDiskId(path: string): string {
  const stat = statSync(path, { bigint: true })
  return `${stat.dev}${stat.rdev}${stat.ino}`.slice(0, 20)
}

/** Whether every thread of `pid` is in the stopped state (or gone). */
function allThreadsStopped(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).every((task) => {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8')
      return /\) [Tt] /.test(stat)
    })
  } catch {
    return true
  }
}

/** The host's TSC rate for TCG guests, whose calibration against the PIT is fragile. */
function tscKhz(): number | undefined {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? []
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1])
  return flags.includes('constant_tsc') && mhz > 0 ? Math.round(mhz * 1000) : undefined
}

let nextName = 0

export function createQemuBackend(options: QemuBackendOptions): VmmBackend {
  const identity = qemuIdentity(options.qemuBinary, options.accel)
  return {
    identity,
    boot: (config) => QemuVm.launch(config, options, undefined),
    restore: (config, state, memoryPath) =>
      QemuVm.launch(config, options, { ...state, memoryPath }),
  }
}

/** Runs `binary` in the VMM's memory cgroup, dying with the shim. */
function spawnVmmProcess(
  options: QemuBackendOptions,
  binary: string,
  args: string[],
  stdio: ('ignore' | 'inherit' | 'pipe')[],
): ChildProcess {
  const command = ['setpriv', '--pdeathsig', 'KILL', '--', binary, ...args]
  const [file, ...rest] =
    options.vmmMemoryCgroup === undefined
      ? command
      : ['sh', '-c', 'echo $$ > "$0" && exec "$@"', options.vmmMemoryCgroup, ...command]
  return spawn(file ?? 'setpriv', rest, { stdio })
}

/** Runs a helper (a copy) to its end. */
function runHelper(options: QemuBackendOptions, binary: string, args: string[]): Promise<void> {
  const child = spawnVmmProcess(options, binary, args, ['ignore', 'ignore', 'pipe'])
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  return new Promise((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${binary} failed (${code}): ${stderr.trim()}`)),
    )
  })
}

class QemuVm implements RunningVm {
  readonly exited: Promise<void>
  readonly #options: QemuBackendOptions
  readonly #config: VmConfig
  readonly #ramFd: number
  readonly #ports: Map<number, string>
  readonly #child: ChildProcess
  #qmp: Qmp | undefined
  #frozen = false

  private constructor(
    options: QemuBackendOptions,
    config: VmConfig,
    ramFd: number,
    ports: Map<number, string>,
    child: ChildProcess,
  ) {
    this.#options = options
    this.#config = config
    this.#ramFd = ramFd
    this.#ports = ports
    this.#child = child
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.#qmp?.close()
        closeSync(ramFd)
        resolve()
        options.onExit(signal === null ? (code ?? 1) : 1)
      })
    })
  }

  /** Starts QEMU for `config`: booting, or loading `incoming` paused. */
  static async launch(
    config: VmConfig,
    options: QemuBackendOptions,
    incoming: { path: string; offset: number; memoryPath: string } | undefined,
  ): Promise<QemuVm> {
    const memoryBytes = config.machine.mem_size_mib * 1024 * 1024
    const ramPath = `/dev/shm/sandcell-firecracker-shim-${process.pid}-${nextName++}`
    const ramFd = openSync(ramPath, 'wx+', 0o600)
    // Only the open descriptors name it from now on: it goes when QEMU and the shim do.
    unlinkSync(ramPath)
    const ram = `/proc/${process.pid}/fd/${ramFd}`
    try {
      if (incoming !== undefined) {
        await runHelper(options, 'cp', ['--sparse=always', incoming.memoryPath, ram])
      }
      ftruncateSync(ramFd, memoryBytes)
      const prefix = `sandcell-firecracker-shim-${process.pid}-${nextName++}`
      const ports = new Map<number, string>()
      for (const [port, name] of options.vsockPorts) {
        ports.set(port, `${prefix}-${name}`)
      }
      const args = qemuArgs(config, options, { ram, qmp: `${prefix}-qmp`, ports })
      if (incoming !== undefined) {
        args.push('-incoming', 'defer', '-S')
      }
      const child = spawnVmmProcess(options, options.qemuBinary, args, [
        'ignore',
        'inherit',
        'inherit',
        incoming === undefined ? 'ignore' : 'pipe',
      ])
      const vm = new QemuVm(options, config, ramFd, ports, child)
      const ended = vm.exited.then(() => {
        throw new Error('QEMU exited while starting (its messages are in the log)')
      })
      ended.catch(() => undefined)
      vm.#qmp = await Promise.race([Qmp.connect(`\0${prefix}-qmp`), ended])
      const qmp = vm.#qmp
      if (incoming !== undefined) {
        await qmp.execute('migrate-set-capabilities', {
          capabilities: [{ capability: 'x-ignore-shared', state: true }],
        })
        await qmp.execute('migrate-incoming', { uri: 'fd:3' })
        createReadStream(incoming.path, { start: incoming.offset })
          .on('error', () => child.kill('SIGKILL'))
          .pipe(child.stdio[3] as Writable)
          .on('error', () => undefined)
        await Promise.race([vm.#waitWhile('inmigrate'), ended])
      } else if ((config.balloon?.amount_mib ?? 0) > 0) {
        await vm.setBalloon(config.balloon?.amount_mib ?? 0)
      }
      return vm
    } catch (err) {
      try {
        closeSync(ramFd)
      } catch {
        // Closed when QEMU exited.
      }
      throw err
    }
  }

  async #status(): Promise<string> {
    return (await this.#monitor().execute<{ status: string }>('query-status')).status
  }

  async #waitWhile(status: string): Promise<void> {
    for (let wait = 1; (await this.#status()) === status; wait = Math.min(wait * 2, 20)) {
      await new Promise((resolve) => setTimeout(resolve, wait))
    }
    const now = await this.#status()
    if (now !== 'paused' && now !== 'prelaunch') {
      throw new Error(`loading the VM state ended in state ${now}`)
    }
  }

  #monitor(): Qmp {
    if (this.#qmp === undefined) {
      throw new Error('QEMU is not running')
    }
    if (this.#frozen) {
      this.#child.kill('SIGCONT')
      this.#frozen = false
    }
    return this.#qmp
  }

  /**
   * Stops the vCPUs, then QEMU itself: a paused Firecracker uses no host CPU, and a stopped
   * QEMU still wakes up now and then.
   */
  async pause(): Promise<void> {
    await this.#monitor().execute('stop')
    this.#child.kill('SIGSTOP')
    this.#frozen = true
    // Answered only once every thread has stopped and this process has taken the SIGCHLD.
    const pid = this.#child.pid ?? 0
    for (let i = 0; i < 1000 && !allThreadsStopped(pid); i++) {
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    await new Promise((resolve) => setTimeout(resolve, 5))
  }

  async resume(): Promise<void> {
    await this.#monitor().execute('cont')
  }

  async setBalloon(amountMiB: number): Promise<void> {
    // QEMU's target is what the guest keeps; Firecracker's is what the balloon holds.
    const keepMiB = this.#config.machine.mem_size_mib - amountMiB
    await this.#monitor().execute('balloon', { value: keepMiB * 1024 * 1024 })
  }

  async balloonActive(): Promise<boolean> {
    const { status } = await this.#monitor().execute<{ status: { statuses: string[] } }>(
      'x-query-virtio-status',
      { path: '/machine/peripheral/balloon' },
    )
    return status.statuses.some((flag) => flag.startsWith('VIRTIO_CONFIG_S_DRIVER_OK'))
  }

  async resizeDrive(driveId: string, sizeBytes: number): Promise<void> {
    await this.#monitor().execute('block_resize', { device: `drive-${driveId}`, size: sizeBytes })
  }

  async save(stateFd: number, memoryPath: string): Promise<void> {
    const qmp = this.#monitor()
    // QEMU saves again only after running once since the last save.
    if ((await this.#status()) === 'postmigrate') {
      await qmp.execute('cont')
      await qmp.execute('stop')
    }
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: true }],
    })
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': unlimitedBandwidth })
    await qmp.execute('migrate', { uri: `exec:cat >> /proc/${process.pid}/fd/${stateFd}` })
    for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate')
      if (info.status === 'completed') {
        break
      }
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new Error(`QEMU could not save the VM: ${info['error-desc'] ?? info.status}`)
      }
      await new Promise((resolve) => setTimeout(resolve, wait))
    }
    await runHelper(this.#options, 'cp', [
      '--sparse=always',
      `/proc/${process.pid}/fd/${this.#ramFd}`,
      memoryPath,
    ])
  }

  async ctrlAltDel(): Promise<void> {
    await this.#monitor().execute('send-key', {
      keys: ['ctrl', 'alt', 'delete'].map((key) => ({ type: 'qcode', data: key })),
    })
  }

  vsockTarget(port: number): string | undefined {
    const name = this.#ports.get(port)
    return this.#config.vsock === undefined || name === undefined ? undefined : `\0${name}`
  }
}

function qemuArgs(
  config: VmConfig,
  options: QemuBackendOptions,
  names: { ram: string; qmp: string; ports: Map<number, string> },
): string[] {
  const { machine, bootSource } = config
  if (bootSource === undefined) {
    throw new Error('no boot source')
  }
  let cmdline = bootSource.boot_args ?? defaultKernelCmdline
  if (options.accel === 'tcg') {
    // Under KVM the guest has kvmclock; under emulation its PIT calibration races the host.
    const khz = tscKhz()
    cmdline += ` tsc=reliable no_timer_check${khz === undefined ? '' : ` tsc_early_khz=${khz}`}`
  }
  const args = [
    '-name',
    'sandcell-firecracker-shim',
    '-M',
    // ACPI describes the virtio-mmio devices, as Firecracker ≥ 1.8 does; no RTC, like it.
    'microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=off,memory-backend=mem',
    '-object',
    `memory-backend-file,id=mem,size=${machine.mem_size_mib}M,mem-path=${names.ram},share=on`,
    '-m',
    `${machine.mem_size_mib}M`,
    '-smp',
    String(machine.vcpu_count),
    ...(options.accel === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host']
      : ['-accel', 'tcg,thread=multi,tb-size=64', '-cpu', 'max']),
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-display',
    'none',
    // Firecracker's i8042 exists to end the VM on the guest's reset (reboot=k).
    '-no-reboot',
    '-device',
    'i8042',
    '-kernel',
    bootSource.kernel_image_path,
    ...(bootSource.initrd_path === undefined ? [] : ['-initrd', bootSource.initrd_path]),
    '-append',
    cmdline,
    '-chardev',
    'file,id=console,path=/proc/self/fd/1,append=on',
    '-serial',
    'chardev:console',
  ]
  for (const drive of config.drives) {
    const id = `drive-${drive.drive_id}`
    args.push(
      '-drive',
      `if=none,id=${id},file=${option(drive.path_on_host)},format=raw,readonly=${drive.is_read_only ? 'on' : 'off'}`,
      '-device',
      // Firecracker's virtio-blk offers neither discard nor write-zeroes.
      `virtio-blk-device,drive=${id},serial=${firecrackerDiskId(drive.path_on_host)},discard=off,write-zeroes=off`,
    )
  }
  for (const net of config.nets) {
    const id = `net-${net.iface_id}`
    args.push(
      '-netdev',
      `tap,id=${id},ifname=${option(net.host_dev_name)},script=no,downscript=no`,
      '-device',
      [
        `virtio-net-device,netdev=${id}`,
        ...(net.guest_mac === undefined ? [] : [`mac=${net.guest_mac}`]),
        ...(net.mtu === undefined ? [] : [`host_mtu=${net.mtu}`]),
      ].join(','),
    )
  }
  if (config.vsock !== undefined && names.ports.size > 0) {
    args.push('-device', 'virtio-serial-device')
    for (const [port, socket] of names.ports) {
      const name = options.vsockPorts.get(port) ?? ''
      args.push(
        '-chardev',
        `socket,id=vsock-${port},path=${socket},abstract=on,tight=off,server=on,wait=off`,
        '-device',
        `virtserialport,chardev=vsock-${port},name=${option(name)}`,
      )
    }
  }
  if (config.balloon !== undefined) {
    const on = (value: boolean): string => (value ? 'on' : 'off')
    args.push(
      '-device',
      `virtio-balloon-device,id=balloon,deflate-on-oom=${on(config.balloon.deflate_on_oom)},free-page-reporting=${on(config.balloon.free_page_reporting)}`,
    )
  }
  args.push(
    '-chardev',
    `socket,id=qmp,path=${names.qmp},abstract=on,tight=off,server=on,wait=off`,
    '-mon',
    'chardev=qmp,mode=control',
  )
  return args
}
