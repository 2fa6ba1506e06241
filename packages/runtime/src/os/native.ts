/** Typed access to the runtime's native addon: mount, umount, loop devices, sparse copy. */
import { createRequire } from 'node:module'
import { constants } from 'node:os'
import { DriverError } from '@sandcell/shared'

interface NativeBinding {
  mount(
    source: string | null,
    target: string,
    fstype: string | null,
    flags: number,
    data: string | null,
  ): number
  umount(target: string, flags: number): number
  loopAttach(path: string, readOnly: number): number | [number, number]
  sparseCopy(source: string, destination: string): number
  fsFreeze(mountPoint: string, freeze: number): number
}

// The addon sits at the package root in build/Release; src/ and dist/ are both one level down.
const binding = createRequire(import.meta.url)(
  '../../build/Release/sandcell_native.node',
) as NativeBinding

/** mount(2) flags we use. */
export const MS = {
  RDONLY: 1,
  NOSUID: 2,
  NODEV: 4,
  NOEXEC: 8,
  REMOUNT: 32,
  NOATIME: 1024,
  BIND: 4096,
  REC: 16384,
  PRIVATE: 1 << 18,
} as const

/** umount2(2) flags. */
export const MNT_DETACH = 2

/** A failed syscall, shaped like Node's own system errors (code, errno, syscall, path). */
export class SyscallError extends DriverError {
  readonly errno: number
  readonly syscall: string
  readonly errnoCode: string

  constructor(syscall: string, errno: number, path: string) {
    const errnoCode =
      Object.entries(constants.errno).find(([, value]) => value === errno)?.[0] ?? `E${errno}`
    super(`${syscall} ${path} failed: ${errnoCode}`, { details: { syscall, path, errnoCode } })
    this.errno = errno
    this.syscall = syscall
    this.errnoCode = errnoCode
  }
}

function check(result: number, syscall: string, path: string): number {
  if (result < 0) {
    throw new SyscallError(syscall, -result, path)
  }
  return result
}

export function mount(
  source: string | null,
  target: string,
  fstype: string | null,
  flags: number,
  data: string | null = null,
): void {
  check(binding.mount(source, target, fstype, flags, data), 'mount', target)
}

/** Unmounts `target`; with `detach` the mount goes lazily once nothing uses it. */
export function umount(target: string, { detach = false }: { detach?: boolean } = {}): void {
  check(binding.umount(target, detach ? MNT_DETACH : 0), 'umount', target)
}

export interface LoopDevice {
  path: string
  /** Open descriptor that keeps the device bound; close it once the device is mounted. */
  fd: number
}

/**
 * Attaches a file to a free loop device with autoclear set, so the device frees itself on its
 * last close: after mounting, close `fd` and the mount alone holds the device.
 */
export function loopAttach(
  path: string,
  { readOnly = false }: { readOnly?: boolean } = {},
): LoopDevice {
  const result = binding.loopAttach(path, readOnly ? 1 : 0)
  if (typeof result === 'number') {
    check(result, 'loop attach', path)
    throw new DriverError(`loop attach ${path} returned no device`)
  }
  const [number, fd] = result
  return { path: `/dev/loop${number}`, fd }
}

/** Copies only the data extents of `source` into a new file `destination`; returns bytes copied. */
export function sparseCopy(source: string, destination: string): number {
  return check(binding.sparseCopy(source, destination), 'sparse copy', destination)
}

/**
 * Freezes (flushes and blocks writes to) or thaws the filesystem mounted at `mountPoint`, so
 * that its backing image can be copied consistently.
 */
export function fsFreeze(mountPoint: string, freeze: boolean): void {
  check(binding.fsFreeze(mountPoint, freeze ? 1 : 0), freeze ? 'freeze' : 'thaw', mountPoint)
}
