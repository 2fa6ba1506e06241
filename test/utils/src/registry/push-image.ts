/**
 * A tiny push client for tests: blobs by POST + PUT upload, manifests and indexes by PUT, in
 * OCI or Docker v2 format, so tests need neither podman nor skopeo.
 */
import { createHash } from 'node:crypto'
import type { TestLayer } from './layer-tar.js'

export interface PushImageOptions {
  layers: readonly TestLayer[]
  /** The image config's run settings and anything to override (e.g. wrong `diffIds`). */
  config?: {
    env?: string[]
    user?: string
    workingDir?: string
    entrypoint?: string[]
    cmd?: string[]
    architecture?: string
    os?: string
    diffIds?: string[]
  }
  /** @default 'oci' */
  format?: 'oci' | 'docker'
  /**
   * Push an index (OCI) or manifest list (Docker) under the tag: an arm64 variant first, then
   * the amd64 image, as multi-platform images are.
   */
  index?: boolean
  credentials?: { username: string; password: string }
}

export interface PushedImage {
  /** `host/repo:tag`. */
  reference: string
  /** Digest of what the tag names (the index, when one was pushed). */
  digest: string
  /** Digest of the amd64 image manifest. */
  manifestDigest: string
  configDigest: string
}

const types = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
    none: 'application/vnd.oci.image.layer.v1.tar',
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
    none: 'application/vnd.docker.image.rootfs.diff.tar',
  },
} as const

const sha256 = (data: Uint8Array): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`

/**
 * Pushes an image to `host` (plain http) as `repoAndTag` (`sandcell/busybox:1`).
 * @throws Error naming the request the registry refused
 */
export async function pushImage(
  host: string,
  repoAndTag: string,
  options: PushImageOptions,
): Promise<PushedImage> {
  const colon = repoAndTag.lastIndexOf(':')
  const repository = repoAndTag.slice(0, colon)
  const tag = repoAndTag.slice(colon + 1)
  const format = options.format ?? 'oci'
  const t = types[format]
  const basic =
    options.credentials === undefined
      ? undefined
      : `Basic ${Buffer.from(`${options.credentials.username}:${options.credentials.password}`).toString('base64')}`
  let authorization = basic
  /** fetch with the registry's auth: Basic as given, or a bearer token its challenge names. */
  const send = async (url: string | URL, init: RequestInit = {}): Promise<Response> => {
    const attempt = (): Promise<Response> =>
      fetch(url, {
        ...init,
        headers: {
          ...(init.headers as Record<string, string> | undefined),
          ...(authorization === undefined ? {} : { authorization }),
        },
      })
    const response = await attempt()
    const challenge = response.headers.get('www-authenticate') ?? ''
    if (response.status !== 401 || !challenge.startsWith('Bearer ')) {
      return response
    }
    const params: Record<string, string | undefined> = Object.fromEntries(
      [...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string]),
    )
    const tokenUrl = new URL(params.realm ?? '')
    tokenUrl.searchParams.set('service', params.service ?? '')
    tokenUrl.searchParams.set('scope', `repository:${repository}:pull,push`)
    const answer = await fetch(tokenUrl, {
      headers: basic === undefined ? {} : { authorization: basic },
    })
    authorization = `Bearer ${((await answer.json()) as { token: string }).token}`
    return attempt()
  }
  const base = `http://${host}/v2/${repository}`

  const pushBlob = async (bytes: Uint8Array, digest = sha256(bytes)): Promise<void> => {
    const head = await send(`${base}/blobs/${digest}`, { method: 'HEAD' })
    if (head.status === 200) {
      return
    }
    const start = await send(`${base}/blobs/uploads/`, { method: 'POST' })
    const location = start.headers.get('location')
    if (start.status !== 202 || location === null) {
      throw new Error(`upload start for ${digest} answered ${start.status}: ${await start.text()}`)
    }
    const url = new URL(location, `http://${host}`)
    url.searchParams.set('digest', digest)
    const put = await send(url, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream' },
      body: bytes,
    })
    if (put.status !== 201) {
      throw new Error(`upload of ${digest} answered ${put.status}: ${await put.text()}`)
    }
  }
  const putManifest = async (
    reference: string,
    mediaType: string,
    body: string,
  ): Promise<string> => {
    const response = await send(`${base}/manifests/${reference}`, {
      method: 'PUT',
      headers: { 'content-type': mediaType },
      body,
    })
    if (response.status !== 201) {
      throw new Error(
        `manifest PUT ${reference} answered ${response.status}: ${await response.text()}`,
      )
    }
    return sha256(Buffer.from(body))
  }

  for (const layer of options.layers) {
    await pushBlob(layer.bytes, layer.digest)
  }
  const config = options.config ?? {}
  const imageManifest = async (
    architecture: string,
  ): Promise<{ digest: string; body: string; configDigest: string }> => {
    const configBody = Buffer.from(
      JSON.stringify({
        architecture,
        os: config.os ?? 'linux',
        config: {
          Env: config.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
          ...(config.user === undefined ? {} : { User: config.user }),
          ...(config.workingDir === undefined ? {} : { WorkingDir: config.workingDir }),
          ...(config.entrypoint === undefined ? {} : { Entrypoint: config.entrypoint }),
          ...(config.cmd === undefined ? {} : { Cmd: config.cmd }),
        },
        rootfs: { type: 'layers', diff_ids: config.diffIds ?? options.layers.map((l) => l.diffId) },
      }),
    )
    const configDigest = sha256(configBody)
    await pushBlob(configBody, configDigest)
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: t.manifest,
      config: { mediaType: t.config, digest: configDigest, size: configBody.length },
      layers: options.layers.map((layer) => ({
        mediaType: layer.mediaType ?? t[layer.compression],
        digest: layer.digest,
        size: layer.bytes.length,
      })),
    })
    return { digest: sha256(Buffer.from(body)), body, configDigest }
  }

  const amd64 = await imageManifest(config.architecture ?? 'amd64')
  if (options.index !== true) {
    await putManifest(tag, t.manifest, amd64.body)
    return {
      reference: `${host}/${repoAndTag}`,
      digest: amd64.digest,
      manifestDigest: amd64.digest,
      configDigest: amd64.configDigest,
    }
  }
  const arm64 = await imageManifest('arm64')
  for (const child of [arm64, amd64]) {
    await putManifest(child.digest, t.manifest, child.body)
  }
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: t.index,
    manifests: [
      { child: arm64, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { child: amd64, platform: { os: 'linux', architecture: 'amd64' } },
    ].map(({ child, platform }) => ({
      mediaType: t.manifest,
      digest: child.digest,
      size: Buffer.byteLength(child.body),
      platform,
    })),
  })
  const digest = await putManifest(tag, t.index, index)
  return {
    reference: `${host}/${repoAndTag}`,
    digest,
    manifestDigest: amd64.digest,
    configDigest: amd64.configDigest,
  }
}
