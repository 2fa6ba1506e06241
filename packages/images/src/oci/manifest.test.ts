import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ImageRejectedError } from '@sandcell/shared'
import {
  checkLayerMediaType,
  mediaTypes,
  offeredPlatforms,
  parseImageConfig,
  parseManifestDocument,
  parsePlatform,
  selectPlatform,
  type Descriptor,
} from './manifest.js'

const digest = (c: string): string => `sha256:${c.repeat(64)}`
const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value))

const manifest = {
  schemaVersion: 2,
  mediaType: mediaTypes.ociManifest,
  config: { mediaType: mediaTypes.ociConfig, digest: digest('c'), size: 10 },
  layers: [{ mediaType: mediaTypes.ociLayerGzip, digest: digest('1'), size: 100 }],
}

const entry = (architecture: string, variant?: string, d = 'd'): Descriptor => ({
  mediaType: mediaTypes.ociManifest,
  digest: digest(d),
  size: 1,
  platform: { os: 'linux', architecture, ...(variant === undefined ? {} : { variant }) },
})

describe('parseManifestDocument', () => {
  it('reads an image manifest by its media type, header or shape', () => {
    const parsed = parseManifestDocument(json(manifest), undefined, 'img')
    assert.equal(parsed.kind, 'manifest')
    const bare: Partial<typeof manifest> = { ...manifest }
    delete bare.mediaType
    assert.equal(parseManifestDocument(json(bare), undefined, 'img').kind, 'manifest')
    assert.equal(
      parseManifestDocument(json(bare), `${mediaTypes.dockerManifest}; charset=utf-8`, 'img').kind,
      'manifest',
    )
  })

  it('reads OCI indexes and Docker manifest lists', () => {
    const index = { schemaVersion: 2, manifests: [entry('amd64')] }
    assert.equal(parseManifestDocument(json(index), mediaTypes.dockerList, 'img').kind, 'index')
    assert.equal(parseManifestDocument(json(index), undefined, 'img').kind, 'index')
  })

  it('rejects schema 1, other artifacts and junk, naming the image', () => {
    const cases: [Buffer, string | undefined, RegExp][] = [
      [json({ schemaVersion: 1, name: 'x' }), undefined, /schema 1/],
      [json(manifest), 'application/vnd.docker.distribution.manifest.v1+prettyjws', /schema 1/],
      [
        json({ ...manifest, mediaType: 'application/vnd.example+json' }),
        undefined,
        /not a container image manifest/,
      ],
      [
        json({
          ...manifest,
          config: { ...manifest.config, mediaType: 'application/vnd.cncf.helm.config.v1+json' },
        }),
        undefined,
        /not a container image: its config/,
      ],
      [Buffer.from('{'), undefined, /not JSON/],
      [json({ ...manifest, layers: [{ digest: 'md5:x', size: 1 }] }), undefined, /only sha256/],
      [json({ ...manifest, layers: 'x' }), undefined, /malformed \(layers:/],
    ]
    for (const [bytes, type, reason] of cases) {
      assert.throws(
        () => parseManifestDocument(bytes, type, 'img:1'),
        (err: Error) =>
          err instanceof ImageRejectedError &&
          err.message.startsWith('img:1') &&
          reason.test(err.message),
        reason.source,
      )
    }
  })
})

describe('selectPlatform', () => {
  const manifests = [
    { ...entry('unknown'), platform: { os: 'unknown', architecture: 'unknown' } },
    entry('arm', 'v7', '1'),
    entry('arm64', undefined, '2'),
    entry('amd64', undefined, '3'),
  ]

  it('picks the matching os and architecture', () => {
    assert.equal(selectPlatform(manifests, parsePlatform('linux/amd64'))?.digest, digest('3'))
    assert.equal(selectPlatform(manifests, parsePlatform('linux/arm/v7'))?.digest, digest('1'))
    assert.equal(selectPlatform(manifests, parsePlatform('linux/s390x')), undefined)
  })

  it('takes arm64 without a variant for v8 and prefers an exact variant', () => {
    assert.equal(selectPlatform(manifests, parsePlatform('linux/arm64/v8'))?.digest, digest('2'))
    const exact = [...manifests, entry('arm64', 'v8', '4')]
    assert.equal(selectPlatform(exact, parsePlatform('linux/arm64/v8'))?.digest, digest('4'))
  })

  it('lists what an index offers, leaving attestations out', () => {
    assert.deepEqual(offeredPlatforms(manifests), ['linux/arm/v7', 'linux/arm64', 'linux/amd64'])
  })
})

describe('parseImageConfig', () => {
  it('reads the run settings and diffIDs', () => {
    const config = parseImageConfig(
      json({
        architecture: 'amd64',
        os: 'linux',
        config: { Env: ['A=1'], User: 'app', WorkingDir: '', Entrypoint: null, Cmd: ['sh'] },
        rootfs: { type: 'layers', diff_ids: [digest('e')] },
      }),
      'img',
    )
    assert.deepEqual(config.run, { env: ['A=1'], user: 'app', cmd: ['sh'] })
    assert.deepEqual(config.diffIds, [digest('e')])
    assert.deepEqual(config.platform, { os: 'linux', architecture: 'amd64' })
  })

  it('rejects a Windows image and a config without layers', () => {
    assert.throws(
      () =>
        parseImageConfig(json({ os: 'windows', rootfs: { type: 'layers', diff_ids: [] } }), 'img'),
      /img is a windows image/,
    )
    assert.throws(() => parseImageConfig(json({ os: 'linux' }), 'img'), /malformed \(rootfs/)
  })
})

describe('checkLayerMediaType', () => {
  it('accepts tar and gzip layers of both formats', () => {
    for (const mediaType of [
      mediaTypes.ociLayer,
      mediaTypes.ociLayerGzip,
      mediaTypes.dockerLayerGzip,
      'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
    ]) {
      checkLayerMediaType({ mediaType, digest: digest('1'), size: 1 }, 'img')
    }
  })

  it('refuses zstd, foreign and unknown layers', () => {
    for (const [mediaType, reason] of [
      ['application/vnd.oci.image.layer.v1.tar+zstd', /zstd-compressed/],
      ['application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', /foreign layer/],
      ['application/octet-stream', /not a tar layer/],
    ] as const) {
      assert.throws(
        () => checkLayerMediaType({ mediaType, digest: digest('1'), size: 1 }, 'img'),
        reason,
      )
    }
  })
})
