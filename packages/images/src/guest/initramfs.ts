/** The initramfs: sandcell-init, compiled static from images/init, and the guest's modules. */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DriverError } from '@sandcell/shared'
import { ensureArtifact, hashParts } from '../core/artifact-cache.js'
import { runTool } from '../core/run-tool.js'
import { guestImageVersion, reportProgress, type BuildContext } from './build-context.js'
import { writeCpio, type CpioEntry } from './cpio.js'
import type { GuestKernel } from './kernel.js'

/** Where the init source lives: images/init in the repository, next to packages/. */
export function initSourcePath(): string {
  return fileURLToPath(new URL('../../../../images/init/sandcell-init.c', import.meta.url))
}

/** Compiles sandcell-init and packs it with the kernel's modules into an uncompressed cpio. */
export async function ensureInitramfs(context: BuildContext, kernel: GuestKernel): Promise<string> {
  const source = initSourcePath()
  if (!existsSync(source)) {
    throw new DriverError(`the guest init source is missing: ${source}`)
  }
  const key = hashParts([
    guestImageVersion,
    readFileSync(source, 'utf8'),
    kernel.release,
    kernel.packageVersion,
  ])
  const dir = await ensureArtifact(
    join(context.imagesDir, 'initramfs'),
    key,
    context,
    async (work) => {
      reportProgress(context, 'initramfs', 'compiling sandcell-init and packing the initramfs')
      const init = join(work, 'init')
      await runTool('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-o', init, source], {
        what: 'compiling sandcell-init (is build-essential installed?)',
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      const order = readFileSync(join(kernel.modulesDir, 'order'), 'utf8')
      const entries: CpioEntry[] = [
        { kind: 'directory', path: 'dev' },
        { kind: 'char-device', path: 'dev/console', major: 5, minor: 1 },
        ...['proc', 'sys', 'lower', 'sandcell', 'disk', 'newroot'].map((path): CpioEntry => ({
          kind: 'directory',
          path,
        })),
        { kind: 'file', path: 'init', data: readFileSync(init), mode: 0o755 },
        { kind: 'directory', path: 'modules' },
        { kind: 'file', path: 'modules/order', data: Buffer.from(order) },
        ...order
          .split('\n')
          .filter((name) => name.length > 0)
          .map((name): CpioEntry => ({
            kind: 'file',
            path: `modules/${name}`,
            data: readFileSync(join(kernel.modulesDir, name)),
          })),
      ]
      // Uncompressed: decompressing costs more emulated time than reading 2 MiB does.
      writeFileSync(join(work, 'initramfs.cpio'), writeCpio(entries))
      rmSync(init)
    },
  )
  return join(dir, 'initramfs.cpio')
}
