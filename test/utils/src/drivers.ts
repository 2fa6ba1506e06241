/** Real drivers for integration tests: a temp data dir each, shared template builds. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import {
  createContainerDriver,
  type ContainerDriver,
  type Driver,
  type Sandbox,
  type SandboxLimits,
} from '@sandcell/runtime'
import { createLogger, type Logger } from '@sandcell/shared'

/**
 * Template root filesystems are built once per machine and kept across runs (the Debian one
 * takes ~20-60 s); tests never write into them.
 */
export const testTemplatesDir =
  process.env.SANDCELL_TEST_TEMPLATES_DIR ?? '/var/tmp/sandcell-test-templates'

export const testLimits: SandboxLimits = { memoryMiB: 256, cpus: 1, pids: 256, diskMiB: 256 }

/** A logger whose lines are kept in memory and printed only when SANDCELL_TEST_LOG is set. */
export function createTestLogger(): Logger & { lines: string[] } {
  const lines: string[] = []
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString('utf8'))
      if (process.env.SANDCELL_TEST_LOG !== undefined) {
        process.stderr.write(chunk)
      }
      callback()
    },
  })
  const log = createLogger({ level: process.env.SANDCELL_TEST_LOG ?? 'debug', destination })
  return Object.assign(log, { lines })
}

/** A driver over a temp data dir of its own, for one test file. */
export interface TestDriver<D extends Driver = ContainerDriver> {
  driver: D
  dataDir: string
  log: Logger & { lines: string[] }
  /** A second driver over the same data dir, as a restarted server would make. */
  reopen(): D
  /** Destroys what the test left and removes the data dir. */
  dispose(): Promise<void>
}

/** Any driver that can adopt what a previous instance left, and close. */
type AdoptingDriver = Driver & { adopt(): Promise<Sandbox[]>; close(): Promise<void> }

/**
 * A driver made by `open` over a fresh temp dir (named after `prefix`), reopenable over the same
 * dir, and disposed of with everything it left.
 */
export function createTestDriver<D extends AdoptingDriver>(
  prefix: string,
  open: (options: { dataDir: string; log: Logger }) => D,
): TestDriver<D> {
  const dataDir = mkdtempSync(join(tmpdir(), prefix))
  const log = createTestLogger()
  const reopen = (): D => open({ dataDir, log })
  const driver = reopen()
  return {
    driver,
    dataDir,
    log,
    reopen,
    async dispose() {
      // Anything a failed test left running is found and removed by adoption's sweep.
      const left = await driver.adopt()
      await Promise.allSettled(left.map((s) => s.destroy({ reason: 'test teardown' })))
      await driver.close()
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

export function createTestContainerDriver(options: { readyTimeoutMs?: number } = {}): TestDriver {
  return createTestDriver('sandcell-test-', ({ dataDir, log }) =>
    createContainerDriver({
      dataDir,
      log,
      templatesDir: testTemplatesDir,
      cgroupParent: `sandcell-test-${process.pid}`,
      ...(options.readyTimeoutMs === undefined ? {} : { readyTimeoutMs: options.readyTimeoutMs }),
    }),
  )
}
