/**
 * Layer tars for tests, built with tar-stream's pack from a list of entries: ordinary files,
 * directories and links, OCI whiteouts, and the hostile kinds (raw names, devices, setuid,
 * foreign owners) a pull must refuse or tame.
 */
import { createHash } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import { pack as tarPack } from 'tar-stream'

interface Owned {
  mode?: number
  uid?: number
  gid?: number
}

/** One tar entry; `path` goes into the header verbatim (`../x` and `/etc/x` included). */
export type LayerEntry =
  | ({ type: 'file'; path: string; content?: string | Uint8Array } & Owned)
  | ({ type: 'dir'; path: string } & Owned)
  | ({ type: 'symlink'; path: string; target: string } & Owned)
  | { type: 'hardlink'; path: string; target: string }
  /** Deletes `path` of the layers below: written as `<dir>/.wh.<name>`. */
  | { type: 'whiteout'; path: string }
  /** Hides the lower content of directory `path`: written as `<path>/.wh..wh..opq`. */
  | { type: 'opaque'; path: string }
  | {
      type: 'character-device' | 'block-device' | 'fifo'
      path: string
      major?: number
      minor?: number
    }

/** A layer blob ready to push. */
export interface TestLayer {
  bytes: Buffer
  /** sha256 of `bytes`. */
  digest: string
  /** sha256 of the uncompressed tar. */
  diffId: string
  compression: 'gzip' | 'none'
  /** Pushed as this media type instead of the format's usual one. */
  mediaType?: string
}

const sha256 = (data: Uint8Array): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`

/** Builds a layer from `entries`, in order, gzip-compressed unless told otherwise. */
export async function buildLayer(
  entries: readonly LayerEntry[],
  options: { compression?: 'gzip' | 'none' } = {},
): Promise<TestLayer> {
  const pack = tarPack()
  const mtime = new Date('2024-01-01T00:00:00Z')
  for (const entry of entries) {
    const owner: Owned = 'uid' in entry || 'gid' in entry ? entry : {}
    const base = { mtime, uid: owner.uid ?? 0, gid: owner.gid ?? 0 }
    switch (entry.type) {
      case 'file':
        pack.entry(
          { ...base, name: entry.path, type: 'file', mode: entry.mode ?? 0o644 },
          Buffer.from(entry.content ?? ''),
        )
        break
      case 'dir':
        pack.entry({ ...base, name: entry.path, type: 'directory', mode: entry.mode ?? 0o755 })
        break
      case 'symlink':
        pack.entry({
          ...base,
          name: entry.path,
          type: 'symlink',
          linkname: entry.target,
          mode: 0o777,
        })
        break
      case 'hardlink':
        pack.entry({ ...base, name: entry.path, type: 'link', linkname: entry.target, mode: 0o644 })
        break
      case 'whiteout': {
        const slash = entry.path.lastIndexOf('/')
        const name = `${entry.path.slice(0, slash + 1)}.wh.${entry.path.slice(slash + 1)}`
        pack.entry({ ...base, name, type: 'file', mode: 0o644 }, Buffer.alloc(0))
        break
      }
      case 'opaque':
        pack.entry(
          { ...base, name: `${entry.path}/.wh..wh..opq`, type: 'file', mode: 0o644 },
          Buffer.alloc(0),
        )
        break
      case 'character-device':
      case 'block-device':
      case 'fifo':
        pack.entry({
          ...base,
          name: entry.path,
          type: entry.type,
          mode: 0o666,
          devmajor: entry.major ?? 0,
          devminor: entry.minor ?? 0,
        })
        break
    }
  }
  pack.finalize()
  const chunks: Buffer[] = []
  for await (const chunk of pack) {
    chunks.push(chunk as Buffer)
  }
  const tar = Buffer.concat(chunks)
  const compression = options.compression ?? 'gzip'
  const bytes = compression === 'gzip' ? gzipSync(tar) : tar
  return { bytes, digest: sha256(bytes), diffId: sha256(tar), compression }
}

/** A layer of one file of `sizeBytes` zeros: a few KiB gzip-compressed, huge unpacked. */
export async function buildCompressionBomb(sizeBytes: number): Promise<TestLayer> {
  return buildLayer([{ type: 'file', path: 'zeros', content: Buffer.alloc(sizeBytes) }])
}
