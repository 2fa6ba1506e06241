/**
 * Writes the executable a driver runs as its `firecracker` binary: the shim bundled into one
 * JavaScript file (no TypeScript loader and its compiler process at run time: they would cost
 * every VM start a second and wake up in a paused VM's cgroup) and a shell script that answers
 * `--version` itself (the driver asks often) and otherwise starts it with the settings baked in.
 */
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildSync } from 'esbuild'
import { qemuIdentity } from './qemu-backend.js'
import { firecrackerVersion } from './shim-version.js'

export interface FirecrackerShimOptions {
  /** Where the executable is written (as `firecracker`). */
  dir: string
  /** KVM only where it can run the guest kernel; TCG otherwise. */
  accel: 'kvm' | 'tcg'
  /** @default 'qemu-system-x86_64' */
  qemuBinary?: string
  /**
   * Guest vsock ports the guest serves on virtio-serial ports instead, port to port name.
   * @default { 1024: 'sandcell.ctl' } (sandcell-init's control port)
   */
  vsockPorts?: Record<number, string>
  /**
   * Charge QEMU's memory (guest RAM, TCG's code cache) to the parent of the memory cgroup the
   * shim is started in (cgroup v1 only), not to the VM's own: that one is sized for
   * Firecracker's few MiB of overhead, QEMU's is far larger.
   * @default false
   */
  vmmMemoryInParentCgroup?: boolean
}

export interface FirecrackerShim {
  /** The executable to give the driver as `firecrackerBinary`. */
  binary: string
  /** The first line of its `--version`: it names the shim and the QEMU build. */
  version: string
}

/** Single-quotes a word for sh. */
function quote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`
}

export function createFirecrackerShim(options: FirecrackerShimOptions): FirecrackerShim {
  const qemu = options.qemuBinary ?? 'qemu-system-x86_64'
  const version = `Firecracker v${firecrackerVersion} (sandcell shim on QEMU ${qemuIdentity(qemu, options.accel)})`
  const ports = Object.entries(options.vsockPorts ?? { 1024: 'sandcell.ctl' })
    .map(([port, name]) => `${port}=${name}`)
    .join(',')
  const shimArgs = ['--shim-qemu', qemu, '--shim-accel', options.accel, '--shim-vsock-ports', ports]
  const memoryCgroup =
    options.vmmMemoryInParentCgroup === true
      ? // Resolved when the shim starts: its own cgroup is the VM's.
        '"$(sed -n "s/^[0-9]*:memory:\\(.*\\)\\/[^/]*$/\\/sys\\/fs\\/cgroup\\/memory\\1\\/cgroup.procs/p" /proc/self/cgroup)"'
      : undefined
  const binary = join(options.dir, 'firecracker')
  const bundle = join(options.dir, 'firecracker-shim.mjs')
  buildSync({
    entryPoints: [fileURLToPath(new URL('./main.ts', import.meta.url))],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: bundle,
    logLevel: 'error',
  })
  const script = [
    '#!/bin/sh',
    '# The sandcell Firecracker shim (test/utils/src/firecracker-shim): Firecracker API, QEMU guest.',
    `if [ "$1" = --version ]; then printf '%s\\n\\n' ${quote(version)}; exit 0; fi`,
    ...(memoryCgroup === undefined
      ? []
      : [
          `cgroup=${memoryCgroup}`,
          'if [ -n "$cgroup" ]; then set -- --shim-vmm-memory-cgroup "$cgroup" "$@"; fi',
        ]),
    ['exec', quote(process.execPath), quote(bundle), ...shimArgs.map(quote), '"$@"'].join(' '),
    '',
  ].join('\n')
  writeFileSync(binary, script)
  chmodSync(binary, 0o755)
  return { binary, version }
}
