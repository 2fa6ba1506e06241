/**
 * The microVM driver on Firecracker (KVM only): the shared microVM driver with Firecracker as its
 * VMM. The same guest as the qemu driver (Debian's cloud kernel, sandcell-init, the template and
 * sandcell images, a per-VM writable disk), the agent reached over the TAP in the VM's network
 * namespace, the guest's control port over vsock; creates load a snapshot of the template booted
 * once, its memory file mapped privately by every clone.
 *
 * Untested against a real Firecracker on the machine this was written on (its /dev/kvm cannot
 * run a stock kernel): the driver contract runs against @sandcell/test-utils' Firecracker shim
 * (Firecracker's API and errors in front of a QEMU guest) there.
 */
import { MicroVmDriver } from '../microvm/microvm-driver.js'
import { resolveMicroVmSettings, type MicroVmDriverOptions } from '../microvm/microvm-settings.js'
import {
  FirecrackerVmm,
  type FirecrackerTypes,
  type FirecrackerVmmOptions,
} from './firecracker-vmm.js'

export interface FirecrackerDriverOptions extends MicroVmDriverOptions, FirecrackerVmmOptions {
  /** @default 'sandcell-vm' */
  cgroupParent?: string
}

export function createFirecrackerDriver(options: FirecrackerDriverOptions): FirecrackerDriver {
  return new FirecrackerDriver(options)
}

export class FirecrackerDriver extends MicroVmDriver<FirecrackerTypes> {
  constructor(options: FirecrackerDriverOptions) {
    const settings = resolveMicroVmSettings('firecracker', options, { cgroupParent: 'sandcell-vm' })
    super(settings, new FirecrackerVmm(settings, options))
  }
}
