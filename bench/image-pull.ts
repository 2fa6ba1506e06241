/**
 * Pull of a 3-layer ~30 MB image from a local registry into unpacked, merged root filesystems:
 * cold (empty store) and warm (everything cached, by tag and by digest), beside `skopeo copy`
 * of the same image into an OCI layout (download only, no unpacking) in the same run.
 * Goals: cold p50 < 2 s, warm p50 < 0.3 s.
 * Usage: npm run bench -- image-pull [coldRuns=5] [warmRuns=20]
 */
import { execFile, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { ImageStore, imagesConfigSchema } from '@sandcell/images'
import { createLogger } from '@sandcell/shared'
import { buildLayer, pushImage, startTestRegistry, type LayerEntry } from '@sandcell/test-utils'
import { measure, report, summarize, type Summary } from './lib/stats.js'

const execFileAsync = promisify(execFile)
const coldRuns = Number(process.argv[2] ?? 5)
const warmRuns = Number(process.argv[3] ?? 20)
const uidOffset = 100000

/** ~10 MiB per layer: incompressible files (as binaries are, nearly) and a few text files. */
function layerEntries(layer: number): LayerEntry[] {
  const entries: LayerEntry[] = [{ type: 'dir', path: `layer${layer}` }]
  for (let i = 0; i < 38; i += 1) {
    entries.push({
      type: 'file',
      path: `layer${layer}/blob${i}.bin`,
      content: randomBytes(256 * 1024),
    })
  }
  for (let i = 0; i < 200; i += 1) {
    entries.push({
      type: 'file',
      path: `layer${layer}/text${i}.txt`,
      content: `line ${i} of layer ${layer}\n`.repeat(200),
    })
  }
  return entries
}

const work = mkdtempSync(join(tmpdir(), 'sandcell-bench-pull-'))
const registry = await startTestRegistry({ dir: join(work, 'registry') })
try {
  const layers = await Promise.all([1, 2, 3].map(async (n) => buildLayer(layerEntries(n))))
  const pushed = await pushImage(registry.host, 'bench/image:1', { layers })
  const compressedMiB = layers.reduce((sum, l) => sum + l.bytes.length, 0) / 1024 / 1024
  const config = imagesConfigSchema.parse({})
  const log = createLogger({ level: process.env.SANDCELL_LOG_LEVEL ?? 'warn' })
  let storeCount = 0
  const freshStore = (): { store: ImageStore; dir: string } => {
    storeCount += 1
    const dir = join(work, `store-${storeCount}`)
    return { store: new ImageStore({ dir, uidOffset, config, log }), dir }
  }

  const cold = await measure(
    coldRuns,
    async () => {
      const { store, dir } = freshStore()
      await store.pull(pushed.reference)
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    },
    1,
  )

  const { store } = freshStore()
  const image = await store.pull(pushed.reference)
  const warmTag = await measure(warmRuns, async () => {
    await store.pull(pushed.reference)
  })
  const pinned = pushed.reference.replace(/:1$/, `@${image.manifestDigest}`)
  const warmDigest = await measure(warmRuns, async () => {
    await store.pull(pinned)
  })
  await store.close()

  const rows: Summary[] = [
    summarize('pull, cold (download + verify + unpack + merge)', cold),
    summarize('pull, warm by tag (manifest GET only)', warmTag),
    summarize('pull, warm by digest (no network)', warmDigest),
  ]
  const notes = [
    'goals: cold p50 < 2 s, warm p50 < 0.3 s',
    `image: 3 layers, ${compressedMiB.toFixed(1)} MiB compressed, ${(image.sizeBytes / 1024 / 1024).toFixed(1)} MiB unpacked, ${layers.length * 239} files`,
    'skopeo only downloads and verifies blobs into an OCI layout; it does not unpack',
  ]
  let baseline: Summary | undefined
  if (spawnSync('skopeo', ['--version']).status === 0) {
    const skopeo = (target: string): Promise<unknown> =>
      execFileAsync('skopeo', [
        'copy',
        '--quiet',
        '--src-tls-verify=false',
        `docker://${pushed.reference}`,
        `oci:${target}:1`,
      ])
    let copyCount = 0
    baseline = summarize(
      'skopeo copy docker:// → oci:, cold',
      await measure(
        coldRuns,
        async () => {
          copyCount += 1
          const dir = join(work, `skopeo-${copyCount}`)
          await skopeo(dir)
          rmSync(dir, { recursive: true, force: true })
        },
        1,
      ),
    )
    const layout = join(work, 'skopeo-warm')
    await skopeo(layout)
    rows.push(
      summarize(
        'skopeo copy, warm (blobs present)',
        await measure(warmRuns, async () => {
          await skopeo(layout)
        }),
      ),
    )
  } else {
    notes.push('baseline skipped: skopeo is not installed (apt-get install skopeo)')
  }
  report('image-pull', rows, baseline, notes)
} finally {
  await registry.stop()
  rmSync(work, { recursive: true, force: true })
}
