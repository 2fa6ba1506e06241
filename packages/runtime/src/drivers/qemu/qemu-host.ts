/**
 * What the qemu driver learns of the host: whether QEMU and the tools around it run, which QEMU
 * build it is (its saved states load only into the same build), and the accelerator (KVM when
 * it can boot the guest, TCG otherwise).
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs'
import { release } from 'node:os'
import { join } from 'node:path'
import { DriverError, delay, standardPath, type Logger } from '@sandcell/shared'
import { hashParts } from '@sandcell/images'
import { missingTools } from '../microvm/guest-setup.js'
import { logTail } from '../microvm/vm-process.js'
import { buildKvmProbeArgs, type Accelerator } from './qemu-args.js'

/** What is wrong with QEMU and the tools of the qemu driver, and QEMU's version. */
export function probeQemuTools(binary: string): {
  problems: string[]
  details: Record<string, string>
} {
  const problems: string[] = []
  const details: Record<string, string> = {}
  try {
    details.qemu = execFileSync(binary, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? ''
  } catch {
    problems.push(`${binary} does not run: apt-get install qemu-system-x86`)
  }
  problems.push(
    ...missingTools([
      ['socat', 'socat'],
      ['mkfs.erofs', 'erofs-utils'],
      ['mkfs.ext4', 'e2fsprogs'],
      ['unshare', 'util-linux'],
      ['nsenter', 'util-linux'],
      ['ip', 'iproute2'],
      ['gcc', 'build-essential'],
      ['lz4', 'lz4'],
      ['dpkg-deb', 'dpkg'],
    ]),
  )
  return { problems, details }
}

/** The QEMU build: its states load only into the same build (microvm is not versioned). */
export function qemuIdentity(binary: string): string {
  const path = realpathSync(findExecutable(binary))
  const stat = statSync(path)
  return `${path}:${stat.size}:${Math.round(stat.mtimeMs)}`
}

/** A command name resolved through the standard PATH, or a path kept as it is. */
function findExecutable(command: string): string {
  if (command.includes('/')) {
    return command
  }
  for (const dir of standardPath.split(':')) {
    const candidate = join(dir, command)
    if (dir.length > 0 && existsSync(candidate)) {
      return candidate
    }
  }
  throw new DriverError(`${command} is not on PATH: apt-get install qemu-system-x86`)
}

/**
 * KVM when `/dev/kvm` can boot our kernel (a nested or paravirtual /dev/kvm may not): tried
 * once with a VM that powers off as soon as its init runs, verdict cached per host kernel.
 */
export async function resolveAccelerator(options: {
  wanted: Accelerator | 'auto'
  binary: string
  qemuIdentity: string
  /** The guest's kernel and initramfs: the probe VM boots them. */
  kernel: string
  initramfs: string
  /** Where the verdict and the probe VM's console log are kept. */
  imagesDir: string
  log: Logger
}): Promise<Accelerator> {
  const { binary, kernel, initramfs, imagesDir } = options
  if (options.wanted !== 'auto') {
    return options.wanted
  }
  if (!existsSync('/dev/kvm')) {
    options.log.warn('no /dev/kvm: microVMs run under TCG (emulation), expect slow boots')
    return 'tcg'
  }
  const verdictPath = join(imagesDir, 'kvm-probe.json')
  const key = hashParts([release(), options.qemuIdentity, kernel, initramfs])
  try {
    const verdict = JSON.parse(readFileSync(verdictPath, 'utf8')) as {
      key: string
      usable: boolean
    }
    if (verdict.key === key) {
      return verdict.usable ? 'kvm' : 'tcg'
    }
  } catch {
    // No verdict yet.
  }
  const log = join(imagesDir, 'kvm-probe.log')
  writeFileSync(log, '')
  const child = spawn(binary, buildKvmProbeArgs({ kernel, initramfs, logPath: log }), {
    stdio: 'ignore',
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.once('error', () => undefined)
  const finished = await Promise.race([exited.then(() => true), delay(20_000).then(() => false)])
  if (!finished) {
    child.kill('SIGKILL')
  }
  const usable = finished && readFileSync(log, 'utf8').includes('sandcell-init: probe ok')
  writeFileSync(verdictPath, JSON.stringify({ key, usable, at: new Date().toISOString() }))
  if (!usable) {
    options.log.warn({ log: logTail(log, 5) }, '/dev/kvm cannot run the guest kernel: using TCG')
  }
  return usable ? 'kvm' : 'tcg'
}
