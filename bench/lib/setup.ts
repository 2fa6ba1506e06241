/** A container driver over a throwaway data dir for benchmarks, and a bare-bwrap baseline. */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createContainerDriver, type ContainerDriver, type SandboxLimits } from '@sandcell/runtime'
import { createLogger } from '@sandcell/shared'

export const benchLimits: SandboxLimits = { memoryMiB: 256, cpus: 1, pids: 256, diskMiB: 256 }

export interface BenchDriver {
  driver: ContainerDriver
  dispose: () => Promise<void>
}

/**
 * Templates come from SANDCELL_TEMPLATES_DIR (the test suite's shared dir by default) so a
 * bench never rebuilds Debian; sandboxes live in a temp dir removed at the end.
 */
export function createBenchDriver(): BenchDriver {
  const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-'))
  const driver = createContainerDriver({
    dataDir,
    templatesDir: process.env.SANDCELL_TEMPLATES_DIR ?? '/var/tmp/sandcell-test-templates',
    cgroupParent: 'sandcell-bench',
    log: createLogger({ level: process.env.SANDCELL_LOG_LEVEL ?? 'warn' }),
  })
  return {
    driver,
    async dispose() {
      const left = await driver.adopt()
      await Promise.allSettled(left.map((s) => s.destroy({ reason: 'bench done' })))
      await driver.close()
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

/** The same namespaces as a sandbox, with nothing inside: the floor any container start pays. */
export const bareBwrapArgs = [
  '--unshare-all',
  '--ro-bind',
  '/usr',
  '/usr',
  '--symlink',
  'usr/lib',
  '/lib',
  '--symlink',
  'usr/lib64',
  '/lib64',
  '--symlink',
  'usr/bin',
  '/bin',
  '--proc',
  '/proc',
  '--dev',
  '/dev',
]

export function runBareBwrap(command: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('bwrap', [...bareBwrapArgs, ...command], { stdio: 'ignore' })
    child.on('error', reject)
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`bwrap exited ${code}`))))
  })
}

/** Waits (untimed) until a server's warm pool holds a ready base sandbox again. */
export async function waitForPool(url: string): Promise<void> {
  for (;;) {
    const health = (await (await fetch(`${url}/health`)).json()) as {
      warmPool: Record<string, number>
    }
    if ((health.warmPool.base ?? 0) > 0) {
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
