/** A Firecracker-compatible VMM for tests on hosts where Firecracker cannot run: its API over QEMU. */
export { createFirecrackerShim } from './shim-binary.js'
export type { FirecrackerShim, FirecrackerShimOptions } from './shim-binary.js'
export { FirecrackerController } from './api-controller.js'
export type { ApiReply, RunningVm, VmConfig, VmmBackend, VsockListener } from './api-controller.js'
export { firecrackerVersion } from './shim-version.js'
