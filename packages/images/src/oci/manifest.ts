/**
 * The registry documents an image pull reads: OCI and Docker v2 manifests, indexes and manifest
 * lists (with the platform picked from them), and the image config (run settings, diffIDs).
 */
import { ImageRejectedError } from '@sandcell/shared'
import { z } from 'zod'
import { digestHex } from './digest.js'

export const mediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const

/** What a manifest GET asks for, best first. */
export const manifestAccept = [
  mediaTypes.ociIndex,
  mediaTypes.ociManifest,
  mediaTypes.dockerList,
  mediaTypes.dockerManifest,
].join(', ')

/** Registries reject larger manifests too (containerd's limit). */
export const maxManifestBytes = 4 * 1024 * 1024
/** An image config is a few KiB; a huge one is an attack on memory, not an image. */
export const maxConfigBytes = 8 * 1024 * 1024

const descriptorSchema = z.object({
  mediaType: z.string().default(''),
  digest: z.string(),
  size: z.number().int().nonnegative(),
  urls: z.array(z.string()).optional(),
  platform: z
    .object({
      os: z.string(),
      architecture: z.string(),
      variant: z.string().optional(),
    })
    .optional(),
})
export type Descriptor = z.output<typeof descriptorSchema>

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  manifests: z.array(descriptorSchema),
})

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
})

/** A parsed manifest document: either an index of per-platform manifests, or one image. */
export type ManifestDocument =
  | { kind: 'index'; manifests: Descriptor[] }
  | { kind: 'manifest'; config: Descriptor; layers: Descriptor[] }

const indexTypes = new Set<string>([mediaTypes.ociIndex, mediaTypes.dockerList])
const imageManifestTypes = new Set<string>([mediaTypes.ociManifest, mediaTypes.dockerManifest])

/**
 * Parses a manifest or index. Its kind comes from the response's Content-Type, else the
 * document's own `mediaType`, else its shape (OCI allows omitting both).
 * @throws ImageRejectedError naming `what` for Docker's schema 1, other artifacts, bad JSON
 */
export function parseManifestDocument(
  bytes: Uint8Array,
  contentType: string | undefined,
  what: string,
): ManifestDocument {
  const reject = (reason: string): ImageRejectedError =>
    new ImageRejectedError(`${what}: ${reason}`, { details: { what } })
  let json: unknown
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch {
    throw reject('the manifest is not JSON')
  }
  if (typeof json !== 'object' || json === null) {
    throw reject('the manifest is not a JSON object')
  }
  const body = json as { mediaType?: unknown; schemaVersion?: unknown }
  const headerType = contentType?.split(';')[0]?.trim().toLowerCase()
  const declared =
    headerType !== undefined && (indexTypes.has(headerType) || imageManifestTypes.has(headerType))
      ? headerType
      : typeof body.mediaType === 'string'
        ? body.mediaType
        : undefined
  if (
    body.schemaVersion === 1 ||
    [headerType, declared].some(
      (type) => type?.startsWith('application/vnd.docker.distribution.manifest.v1') === true,
    )
  ) {
    throw reject(
      "it uses Docker's schema 1 manifest, which sandcell does not read; push the image again with a current Docker or skopeo",
    )
  }
  const isIndex =
    declared === undefined ? 'manifests' in body : indexTypes.has(declared.toLowerCase())
  if (!isIndex && declared !== undefined && !imageManifestTypes.has(declared.toLowerCase())) {
    throw reject(`its media type ${JSON.stringify(declared)} is not a container image manifest`)
  }
  const parsed = (isIndex ? indexSchema : manifestSchema).safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw reject(
      `the ${isIndex ? 'index' : 'manifest'} is malformed (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'})`,
    )
  }
  if ('manifests' in parsed.data) {
    return { kind: 'index', manifests: parsed.data.manifests }
  }
  const { config, layers } = parsed.data
  if (
    config.mediaType !== '' &&
    config.mediaType !== mediaTypes.ociConfig &&
    config.mediaType !== mediaTypes.dockerConfig
  ) {
    throw reject(
      `it is not a container image: its config has the media type ${JSON.stringify(config.mediaType)}`,
    )
  }
  digestHex(config.digest, `${what}: the config`)
  for (const layer of layers) {
    digestHex(layer.digest, `${what}: a layer`)
  }
  return { kind: 'manifest', config, layers }
}

/** A platform as `os/architecture[/variant]`. */
export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export function parsePlatform(text: string): Platform {
  const [os = '', architecture = '', variant] = text.split('/')
  return { os, architecture, ...(variant === undefined ? {} : { variant }) }
}

export function formatPlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/')
}

/**
 * The manifest of an index that runs on `wanted`: same os and architecture, and the variant
 * when one is wanted (arm64's v8 also matches an entry without variant, as Docker does). An
 * exact variant match wins over a looser one; otherwise the first entry in the index.
 * @returns undefined when no entry fits
 */
export function selectPlatform(
  manifests: readonly Descriptor[],
  wanted: Platform,
): Descriptor | undefined {
  const candidates = manifests.filter(
    (m) => m.platform?.os === wanted.os && m.platform.architecture === wanted.architecture,
  )
  if (wanted.variant === undefined) {
    return candidates[0]
  }
  const exact = candidates.find((m) => m.platform?.variant === wanted.variant)
  if (exact !== undefined) {
    return exact
  }
  const implicit = wanted.architecture === 'arm64' && wanted.variant === 'v8'
  return implicit ? candidates.find((m) => m.platform?.variant === undefined) : undefined
}

/** The platforms an index offers, for the error when none fits (attestations left out). */
export function offeredPlatforms(manifests: readonly Descriptor[]): string[] {
  return manifests
    .map((m) => m.platform)
    .filter((p): p is Platform => p !== undefined && p.os !== 'unknown')
    .map(formatPlatform)
}

const stringList = z.array(z.string()).nullish()

const imageConfigSchema = z.object({
  os: z.string().optional(),
  architecture: z.string().optional(),
  variant: z.string().optional(),
  config: z
    .object({
      Env: stringList,
      User: z.string().nullish(),
      WorkingDir: z.string().nullish(),
      Entrypoint: stringList,
      Cmd: stringList,
    })
    .nullish(),
  rootfs: z.object({
    type: z.literal('layers'),
    diff_ids: z.array(z.string()),
  }),
})

/** How a container of the image runs, from its config (Docker's names, in camelCase). */
export interface ImageRunConfig {
  env: string[]
  user?: string
  workingDir?: string
  entrypoint?: string[]
  cmd?: string[]
}

export interface ImageConfig {
  platform: Platform
  run: ImageRunConfig
  /** sha256 of each layer's uncompressed tar, bottom first. */
  diffIds: string[]
}

/**
 * Parses an image config blob.
 * @throws ImageRejectedError naming `what` when it is not one, or not a Linux image
 */
export function parseImageConfig(bytes: Uint8Array, what: string): ImageConfig {
  let json: unknown
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch {
    throw new ImageRejectedError(`${what}: the image config is not JSON`)
  }
  const parsed = imageConfigSchema.safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new ImageRejectedError(
      `${what}: the image config is malformed (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'})`,
    )
  }
  const { os = 'linux', architecture = '', variant, config, rootfs } = parsed.data
  if (os !== 'linux') {
    throw new ImageRejectedError(`${what} is a ${os} image; sandboxes run Linux images only`)
  }
  for (const diffId of rootfs.diff_ids) {
    digestHex(diffId, `${what}: a layer's diffID`)
  }
  const nonEmpty = (value: string | null | undefined): string | undefined =>
    value === null || value === undefined || value === '' ? undefined : value
  const user = nonEmpty(config?.User)
  const workingDir = nonEmpty(config?.WorkingDir)
  const entrypoint = config?.Entrypoint ?? undefined
  const cmd = config?.Cmd ?? undefined
  return {
    platform: { os, architecture, ...(variant === undefined ? {} : { variant }) },
    run: {
      env: config?.Env ?? [],
      ...(user === undefined ? {} : { user }),
      ...(workingDir === undefined ? {} : { workingDir }),
      ...(entrypoint === undefined ? {} : { entrypoint }),
      ...(cmd === undefined ? {} : { cmd }),
    },
    diffIds: rootfs.diff_ids,
  }
}

/**
 * Checks a layer's media type before anything is downloaded (the compression itself is sniffed
 * from the bytes when unpacking: registries mislabel it).
 * @throws ImageRejectedError for zstd, foreign (Windows) and unknown layer types
 */
export function checkLayerMediaType(layer: Descriptor, what: string): void {
  const type = layer.mediaType
  if (type.endsWith('zstd')) {
    throw new ImageRejectedError(
      `${what}: layer ${layer.digest} is zstd-compressed, which sandcell does not support; use an image built with gzip layers (e.g. docker buildx --output type=image,compression=gzip)`,
      { details: { digest: layer.digest, mediaType: type } },
    )
  }
  if (type.includes('foreign') || (layer.urls?.length ?? 0) > 0) {
    throw new ImageRejectedError(
      `${what}: layer ${layer.digest} is a foreign layer (${type}) that registries do not serve`,
      { details: { digest: layer.digest, mediaType: type } },
    )
  }
  const known =
    type === '' ||
    type === mediaTypes.dockerLayerGzip ||
    type === 'application/vnd.docker.image.rootfs.diff.tar' ||
    /^application\/vnd\.oci\.image\.layer\.(nondistributable\.)?v1\.tar(\+gzip)?$/.test(type)
  if (!known) {
    throw new ImageRejectedError(
      `${what}: layer ${layer.digest} has the media type ${JSON.stringify(type)}, which is not a tar layer`,
      { details: { digest: layer.digest, mediaType: type } },
    )
  }
}
