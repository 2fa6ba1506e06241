export * from './driver.js'
export * from './guarded-sandbox.js'
export * from './sandbox-events.js'
export * from './warm-pool.js'
export { createContainerDriver, ContainerDriver } from './drivers/container/container-driver.js'
export type { ContainerDriverOptions } from './drivers/container/container-driver.js'
export { templateNames } from '@sandcell/images'
export { startTemplate, templateShell, type ShellCommand } from './template-start.js'
export * from './config.js'
export * from './drivers-from-config.js'
export { createQemuDriver, QemuDriver } from './drivers/qemu/qemu-driver.js'
export type { QemuDriverOptions } from './drivers/qemu/qemu-driver.js'
export {
  createFirecrackerDriver,
  FirecrackerDriver,
} from './drivers/firecracker/firecracker-driver.js'
export type { FirecrackerDriverOptions } from './drivers/firecracker/firecracker-driver.js'
export * from './routing-driver.js'
