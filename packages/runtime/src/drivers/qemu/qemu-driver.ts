/**
 * The microVM driver on QEMU's `microvm` machine (KVM when it can run the guest, TCG otherwise):
 * the shared microVM driver with QEMU as its VMM. Debian's cloud kernel, sandcell-init as PID 1,
 * the guest on a TAP in the VM's network namespace, its agent reached by a Unix-socket relay;
 * creates restore a snapshot of the template booted once.
 */
import { MicroVmDriver } from '../microvm/microvm-driver.js'
import { resolveMicroVmSettings, type MicroVmDriverOptions } from '../microvm/microvm-settings.js'
import type { Accelerator } from './qemu-args.js'
import { QemuVmm, type QemuTypes, type QemuVmmOptions } from './qemu-vmm.js'

export interface QemuDriverOptions extends MicroVmDriverOptions, QemuVmmOptions {
  /** @default 'sandcell' */
  cgroupParent?: string
}

export function createQemuDriver(options: QemuDriverOptions): QemuDriver {
  return new QemuDriver(options)
}

export class QemuDriver extends MicroVmDriver<QemuTypes> {
  constructor(options: QemuDriverOptions) {
    const settings = resolveMicroVmSettings('qemu', options, { cgroupParent: 'sandcell' })
    super(settings, new QemuVmm(settings, options))
  }

  /**
   * The accelerator VMs run under (KVM or TCG), deciding it (and building the guest kernel)
   * first when needed.
   */
  async accelerator(): Promise<Accelerator> {
    return (await this.ensureSetup()).vmm.accel
  }
}
