/**
 * Template builds through the official `e2b` SDK against a real `sandcell serve`, from a busybox
 * image in a local registry: a cold build (fresh server data, so image, layers and files are all
 * new), an unchanged rebuild (every step cached), a rebuild after the last COPY changed; then
 * `Sandbox.create(name)` → first `commands.run` from the built template beside the same from
 * the built-in `base` (no warm pool, both cold), and the bytes two templates on one image take.
 * Goals: cold build < 3 s, unchanged rebuild < 1 s, create within 1.2× of base, the image
 * stored once. Usage: npm run bench -- template-build [runs=20]
 */
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox, Template, type TemplateClass } from 'e2b'
import {
  pushBusyboxImage,
  startServeProcess,
  startTestRegistry,
  type ServeProcess,
} from '@sandcell/test-utils'
import { report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 20)
const coldRuns = 3
const work = mkdtempSync(join(tmpdir(), 'sandcell-bench-builds-'))
chmodSync(work, 0o711)
const context = join(work, 'context')
execFileSync('mkdir', ['-p', context])
const registry = await startTestRegistry({ dir: join(work, 'registry') })
const configFile = join(work, 'config.yaml')
writeFileSync(configFile, 'warmPool:\n  base: 0\n')

async function startServer(name: string): Promise<ServeProcess> {
  return startServeProcess({ dataDir: join(work, name), configFile, killSandboxesOnExit: true })
}

function template(image: string): TemplateClass {
  return Template({ fileContextPath: context })
    .fromImage(image)
    .copy('app.txt', '/home/user/app/')
    .runCmd('echo hi > /home/user/hi.txt')
    .setEnvs({ APP: 'bench' })
    .setWorkdir('/home/user/app')
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now()
  await fn()
  return performance.now() - started
}

/** Bytes under `dir`, hard-linked files counted once (what the disk holds). */
function diskBytes(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0])
}

try {
  const image = `${registry.host}/bench/busybox:1`
  await pushBusyboxImage(registry.host, 'bench/busybox:1')
  writeFileSync(join(context, 'app.txt'), 'version 1\n')

  const cold: number[] = []
  for (let i = 0; i < coldRuns; i++) {
    const server = await startServer(`cold-${i}`)
    try {
      cold.push(await timed(() => Template.build(template(image), 'bench-app', server.connection)))
    } finally {
      await server.stop()
    }
  }

  const server = await startServer('warm')
  try {
    await Template.build(template(image), 'bench-app', server.connection)
    const unchanged: number[] = []
    const changed: number[] = []
    for (let i = 0; i < Math.min(runs, 10); i++) {
      unchanged.push(
        await timed(() => Template.build(template(image), 'bench-app', server.connection)),
      )
      writeFileSync(join(context, 'app.txt'), `version ${i + 2}\n`)
      changed.push(
        await timed(() => Template.build(template(image), 'bench-app', server.connection)),
      )
    }

    const createAndRun = async (name: string): Promise<number> =>
      timed(async () => {
        const sandbox = await Sandbox.create(name, server.connection)
        await sandbox.commands.run('true')
        await sandbox.kill()
      })
    const fromBase: number[] = []
    const fromBuilt: number[] = []
    for (let i = 0; i < runs + 2; i++) {
      const base = await createAndRun('base')
      const built = await createAndRun('bench-app')
      if (i >= 2) {
        fromBase.push(base)
        fromBuilt.push(built)
      }
    }

    const buildsDir = join(work, 'warm', 'builds')
    const oneTemplate = diskBytes(buildsDir)
    await Template.build(
      Template().fromImage(image).runCmd('echo other > /home/user/other.txt'),
      'bench-other',
      server.connection,
    )
    const twoTemplates = diskBytes(buildsDir)
    const imageBytes = diskBytes(join(buildsDir, 'images'))

    const baseline = summarize('Sandbox.create("base") → commands.run("true"), cold', fromBase)
    report(
      'template-build',
      [
        summarize('busybox template, cold build (empty caches), SDK build → ready', cold),
        summarize('unchanged rebuild (every step cached)', unchanged),
        summarize('rebuild after the last COPY changed', changed),
        summarize('Sandbox.create(built) → commands.run("true"), cold', fromBuilt),
      ],
      baseline,
      [
        'goals: cold build < 3 s; unchanged rebuild < 1 s; create from a built template within 1.2x of base',
        `disk: builds dir ${(oneTemplate / 1048576).toFixed(2)} MiB with one template, ${(twoTemplates / 1048576).toFixed(2)} MiB with two on the same image (image store ${(imageBytes / 1048576).toFixed(2)} MiB, held once)`,
      ],
    )
  } finally {
    await server.stop()
  }
} finally {
  await registry.stop()
  rmSync(work, { recursive: true, force: true })
}
