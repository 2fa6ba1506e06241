/**
 * The image store: pulls images from registries into read-only root filesystems that the
 * container driver stacks its sandboxes on. Everything is content-addressed and made once:
 *
 * ```
 * <dir>/            0700: only root reaches the layers every sandbox shares
 *   store.json      the uid offset the trees are owned for
 *   blobs/sha256/   manifests, indexes and configs (layer blobs only until unpacked)
 *   layers/<diffID hex>/tree, layer.json     one unpacked layer
 *   images/<chainID hex>/rootfs, image.json  the merged root, hard-linked to the layers
 *   locks/          cross-process build locks per layer and image
 * ```
 *
 * Each entry is built under a temporary name and renamed when complete, so a crash leaves
 * nothing that is ever used; leftovers of dead processes are removed when a store opens. A
 * pull by digest that finds everything needs no network; a pull by tag fetches only the
 * manifest (a moved tag is noticed). Concurrent pulls of one image in a process share the
 * work; across processes the build locks order them.
 *
 * A rootfs shares its inodes with the layer trees and with other images: it must never be
 * changed in place (chown, chmod, writes); copy it or stack an overlay on it.
 */
import { chmodSync, lchownSync, mkdirSync } from 'node:fs'
import { mkdir, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import {
  DriverError,
  ImageRejectedError,
  NotFoundError,
  ResourceExhaustedError,
  Semaphore,
  type Logger,
} from '@sandcell/shared'
import type { Agent } from 'undici'
import { acquireBuildLock } from '../core/build-lock.js'
import { readJsonFile, writeJsonAtomic } from '../core/json-file.js'
import { measureTree } from '../core/tree-walk.js'
import { BlobStore } from './blob-store.js'
import { chainIds, digestHex } from './digest.js'
import { parseImageReference, type ImageReference } from './image-reference.js'
import type { ImagesConfig } from './images-config.js'
import { UnpackBudget, unpackLayer, type UnpackedLayer } from './layer-unpack.js'
import {
  checkLayerMediaType,
  formatPlatform,
  maxConfigBytes,
  offeredPlatforms,
  parseImageConfig,
  parseManifestDocument,
  parsePlatform,
  selectPlatform,
  type Descriptor,
  type ImageConfig,
  type ImageRunConfig,
} from './manifest.js'
import { RegistryClient, RegistryTokenCache, type RegistryCredentials } from './registry-client.js'
import { createRegistryDispatcher } from './registry-http.js'
import { mergeLayers, type MergeLayer } from './rootfs-merge.js'
import { removeStaleTemps, tempName } from './store-temp.js'

/** A pulled image, ready to be a sandbox's read-only root. */
export interface PulledImage {
  /** The reference as resolved (after aliases and mirrors): `127.0.0.1:5000/library/python:3`. */
  reference: string
  /**
   * The digest of the document the reference names (an index's when the tag names one), so
   * that `repository@manifestDigest` pulls this same image.
   */
  manifestDigest: string
  /** The merged root filesystem: read-only, owned shifted by the uid offset, shared. */
  rootfsDir: string
  /** How the image runs: Env, User, WorkingDir, Entrypoint, Cmd of its config. */
  config: ImageRunConfig
  /** Bytes of the root filesystem's regular files, each inode once. */
  sizeBytes: number
}

/** A line for the build log. */
export interface PullLogLine {
  level: 'info' | 'warn'
  message: string
}

export interface PullOptions {
  /** A login for this pull (the SDK's `fromImage(image, { username, password })`). */
  credentials?: RegistryCredentials
  signal?: AbortSignal
  /** Progress and warnings in words, for the build log. */
  onLog?: (line: PullLogLine) => void
}

export interface ImageStoreOptions {
  /** Where blobs, layers and images live; made 0700. */
  dir: string
  /** Host uid/gid of sandbox uid/gid 0: every file is stored owned `uidOffset + id`. */
  uidOffset: number
  config: ImagesConfig
  log: Logger
}

/** What `layer.json` holds. */
interface LayerRecord extends UnpackedLayer {
  formatVersion: 1
  diffId: string
  uidOffset: number
  unpackedAt: string
}

/** What `image.json` holds. */
interface ImageRecord {
  formatVersion: 1
  chainId: string
  diffIds: string[]
  uidOffset: number
  sizeBytes: number
  /** Warnings of the layers (dropped entries), repeated on every pull of the image. */
  warnings: string[]
  builtAt: string
}

const formatVersion = 1
/** Layers downloaded and unpacked at once per pull. */
const layerConcurrency = 3
const maxEntriesPerLayer = 500_000

/** Waiters of one in-flight pull: the work stops only when every one of them gave up. */
interface SharedPull {
  promise: Promise<PulledImage>
  controller: AbortController
  waiters: number
  listeners: Set<(line: PullLogLine) => void>
}

export class ImageStore implements AsyncDisposable {
  readonly #dir: string
  readonly #uidOffset: number
  readonly #config: ImagesConfig
  readonly #log: Logger
  readonly #dispatcher: Agent
  readonly #tokens = new RegistryTokenCache()
  readonly #pulls = new Map<string, SharedPull>()
  readonly #layerJobs = new Map<string, Promise<LayerRecord>>()
  #ready: Promise<BlobStore> | undefined

  constructor(options: ImageStoreOptions) {
    this.#dir = options.dir
    this.#uidOffset = options.uidOffset
    this.#config = options.config
    this.#log = options.log.child({ component: 'images.oci' })
    this.#dispatcher = createRegistryDispatcher(options.config.requestTimeoutMs)
  }

  /**
   * Pulls `reference` (or finds it cached) and returns its merged root filesystem.
   * @throws InvalidArgumentError for a bad reference; NotFoundError for an unknown image, tag
   * or platform; UnauthenticatedError when the registry wants (other) credentials;
   * UnavailableError when it cannot be reached in time; ImageRejectedError for corrupt or
   * hostile content; ResourceExhaustedError past images.maxImageMiB; DriverError when the
   * disk fails; the signal's reason when aborted
   */
  async pull(reference: string, options: PullOptions = {}): Promise<PulledImage> {
    const ref = parseImageReference(reference, this.#config)
    const login = options.credentials
    const key = `${ref.name}\0${login === undefined ? '' : `${login.username}\0${login.password}`}`
    let shared = this.#pulls.get(key)
    if (shared === undefined) {
      const controller = new AbortController()
      const listeners = new Set<(line: PullLogLine) => void>()
      const promise = this.#pull(ref, login, controller.signal, (line) => {
        for (const listener of listeners) {
          listener(line)
        }
      }).finally(() => {
        if (this.#pulls.get(key) === shared) {
          this.#pulls.delete(key)
        }
      })
      shared = { promise, controller, waiters: 0, listeners }
      this.#pulls.set(key, shared)
    }
    return this.#wait(key, shared, options)
  }

  async close(): Promise<void> {
    await this.#dispatcher.close()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }

  /** Joins a shared pull; leaving it (abort) stops the work once nobody else waits. */
  async #wait(key: string, shared: SharedPull, options: PullOptions): Promise<PulledImage> {
    const { signal, onLog } = options
    signal?.throwIfAborted()
    shared.waiters += 1
    if (onLog !== undefined) {
      shared.listeners.add(onLog)
    }
    let onAbort: (() => void) | undefined
    const aborted = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(signal?.reason as Error)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
    try {
      return await Promise.race([shared.promise, aborted])
    } finally {
      if (onAbort !== undefined) {
        signal?.removeEventListener('abort', onAbort)
      }
      if (onLog !== undefined) {
        shared.listeners.delete(onLog)
      }
      shared.waiters -= 1
      if (shared.waiters === 0 && signal?.aborted === true) {
        shared.controller.abort(signal.reason)
        // A pull starting now must not join the one being torn down.
        if (this.#pulls.get(key) === shared) {
          this.#pulls.delete(key)
        }
      }
      // The shared promise is awaited above or by another waiter; this keeps an abandoned one
      // (everybody aborted) from surfacing as an unhandled rejection.
      shared.promise.catch(() => undefined)
    }
  }

  async #pull(
    ref: ImageReference,
    credentials: RegistryCredentials | undefined,
    signal: AbortSignal,
    emit: (line: PullLogLine) => void,
  ): Promise<PulledImage> {
    const started = performance.now()
    const blobs = await this.#open()
    const image = ref.name
    const client = new RegistryClient({
      registry: ref.registry,
      config: this.#config,
      dispatcher: this.#dispatcher,
      tokens: this.#tokens,
      log: this.#log,
      signal,
      ...(credentials === undefined ? {} : { credentials }),
    })
    const top = await this.#topManifest(client, ref, blobs)
    const { manifest, config } = await this.#resolve(client, ref, top, blobs, emit)
    const chainId = chainIds(config.diffIds).at(-1) as string // checked non-empty in #resolve
    const imageDir = join(this.#dir, 'images', digestHex(chainId, image))
    let record = this.#readImageRecord(imageDir)
    const cached = record !== undefined
    if (record === undefined) {
      const layers = await this.#ensureLayers(
        client,
        ref,
        manifest.layers,
        config.diffIds,
        blobs,
        signal,
        emit,
      )
      record = await this.#buildImage(imageDir, chainId, config.diffIds, layers, image, signal)
    }
    for (const warning of record.warnings) {
      emit({ level: 'warn', message: warning })
    }
    const durationMs = Math.round(performance.now() - started)
    this.#log.info({ image, manifestDigest: top.digest, cached, durationMs }, 'image pulled')
    emit({
      level: 'info',
      message: `image ${image} ${cached ? 'was cached' : 'pulled'}: ${config.diffIds.length} layer${config.diffIds.length === 1 ? '' : 's'}, ${formatBytes(record.sizeBytes)}, ${(durationMs / 1000).toFixed(1)} s`,
    })
    return {
      reference: image,
      manifestDigest: top.digest,
      rootfsDir: join(imageDir, 'rootfs'),
      config: config.run,
      sizeBytes: record.sizeBytes,
    }
  }

  /** The document the reference names: from the blob store when pinned by digest. */
  async #topManifest(
    client: RegistryClient,
    ref: ImageReference,
    blobs: BlobStore,
  ): Promise<{ bytes: Buffer; contentType: string | undefined; digest: string }> {
    if (ref.digest !== undefined) {
      const local = blobs.readSmall(ref.digest)
      if (local !== undefined) {
        return { bytes: local, contentType: undefined, digest: ref.digest }
      }
    }
    const fetched = await client.fetchManifest(
      ref.repository,
      ref.digest ?? (ref.tag as string),
      ref.name,
    )
    if (blobs.find(fetched.digest) === undefined) {
      blobs.writeVerified(fetched.digest, fetched.bytes)
    }
    return fetched
  }

  /** From the top document to one image manifest and its config, with the size checks. */
  async #resolve(
    client: RegistryClient,
    ref: ImageReference,
    top: { bytes: Buffer; contentType: string | undefined },
    blobs: BlobStore,
    emit: (line: PullLogLine) => void,
  ): Promise<{ manifest: { config: Descriptor; layers: Descriptor[] }; config: ImageConfig }> {
    const image = ref.name
    let document = parseManifestDocument(top.bytes, top.contentType, image)
    const wanted = parsePlatform(this.#config.platform)
    if (document.kind === 'index') {
      const chosen = selectPlatform(document.manifests, wanted)
      if (chosen === undefined) {
        const offered = offeredPlatforms(document.manifests)
        throw new NotFoundError(
          `image ${image} has no ${formatPlatform(wanted)} variant; it has ${offered.length === 0 ? 'none for Linux' : offered.join(', ')}`,
          { details: { image, platform: formatPlatform(wanted), offered } },
        )
      }
      const bytes =
        blobs.readSmall(chosen.digest) ??
        (await this.#fetchDocument(client, ref, chosen.digest, blobs))
      document = parseManifestDocument(bytes, chosen.mediaType, image)
      if (document.kind === 'index') {
        throw new ImageRejectedError(
          `${image}: its index names another index for ${formatPlatform(wanted)}`,
        )
      }
    }
    const manifest = document
    if (manifest.layers.length === 0) {
      throw new ImageRejectedError(`${image} has no layers`)
    }
    const limitBytes = this.#config.maxImageMiB * 1024 * 1024
    const compressedBytes = manifest.layers.reduce((sum, layer) => sum + layer.size, 0)
    if (compressedBytes > limitBytes) {
      throw new ResourceExhaustedError(
        `image ${image} is ${formatBytes(compressedBytes)} compressed, more than images.maxImageMiB (${this.#config.maxImageMiB} MiB); raise the limit or use a smaller image`,
        { details: { image, compressedBytes, maxImageMiB: this.#config.maxImageMiB } },
      )
    }
    manifest.layers.forEach((layer, i) => {
      checkLayerMediaType(layer, `${image} layer ${i + 1}/${manifest.layers.length}`)
    })
    if (manifest.config.size > maxConfigBytes) {
      throw new ImageRejectedError(
        `${image}: its config is ${manifest.config.size} bytes, more than ${maxConfigBytes}`,
      )
    }
    let configBytes = blobs.readSmall(manifest.config.digest)
    if (configBytes === undefined) {
      await client.fetchBlob(ref.repository, manifest.config, image, blobs, 'the image config')
      configBytes = blobs.readSmall(manifest.config.digest)
    }
    if (configBytes === undefined) {
      throw new DriverError(`the config of ${image} vanished from the blob store ${blobs.dir}`)
    }
    const config = parseImageConfig(configBytes, image)
    if (config.diffIds.length !== manifest.layers.length) {
      throw new ImageRejectedError(
        `${image}: its manifest has ${manifest.layers.length} layers but its config ${config.diffIds.length} diffIDs`,
      )
    }
    if (
      config.platform.architecture !== '' &&
      config.platform.architecture !== wanted.architecture
    ) {
      emit({
        level: 'warn',
        message: `image ${image} is built for ${formatPlatform(config.platform)}, not ${formatPlatform(wanted)}: its programs may not run here`,
      })
    }
    return { manifest, config }
  }

  async #fetchDocument(
    client: RegistryClient,
    ref: ImageReference,
    digest: string,
    blobs: BlobStore,
  ): Promise<Buffer> {
    const fetched = await client.fetchManifest(ref.repository, digest, ref.name)
    blobs.writeVerified(fetched.digest, fetched.bytes)
    return fetched.bytes
  }

  /** Every layer unpacked (downloaded first when needed), bottom first. */
  async #ensureLayers(
    client: RegistryClient,
    ref: ImageReference,
    layers: readonly Descriptor[],
    diffIds: readonly string[],
    blobs: BlobStore,
    signal: AbortSignal,
    emit: (line: PullLogLine) => void,
  ): Promise<{ merge: MergeLayer; record: LayerRecord }[]> {
    const budget = new UnpackBudget(this.#config.maxImageMiB, ref.name)
    const semaphore = new Semaphore(layerConcurrency)
    return Promise.all(
      layers.map((descriptor, i) =>
        semaphore.run(async () => {
          const diffId = diffIds[i] as string // same length, checked in #resolve
          const what = `layer ${i + 1}/${layers.length} (${descriptor.digest}) of image ${ref.name}`
          const layerDir = join(this.#dir, 'layers', digestHex(diffId, what))
          let record = this.#readLayerRecord(layerDir)
          if (record !== undefined) {
            budget.take(record.tarBytes)
          } else {
            const hex = digestHex(diffId, what)
            let job = this.#layerJobs.get(hex)
            const mine = job === undefined
            if (job === undefined) {
              job = this.#unpackLayer({
                client,
                ref,
                descriptor,
                diffId,
                layerDir,
                what,
                blobs,
                budget,
                signal,
                emit,
              }).finally(() => {
                this.#layerJobs.delete(hex)
              })
              this.#layerJobs.set(hex, job)
            }
            record = await job
            if (!mine) {
              budget.take(record.tarBytes)
            }
          }
          return {
            record,
            merge: { treeDir: join(layerDir, 'tree'), record, what },
          }
        }, signal),
      ),
    )
  }

  async #unpackLayer(job: {
    client: RegistryClient
    ref: ImageReference
    descriptor: Descriptor
    diffId: string
    layerDir: string
    what: string
    blobs: BlobStore
    budget: UnpackBudget
    signal: AbortSignal
    emit: (line: PullLogLine) => void
  }): Promise<LayerRecord> {
    const { client, ref, descriptor, diffId, layerDir, what, blobs, signal } = job
    const hex = digestHex(diffId, what)
    const lock = await acquireBuildLock(join(this.#dir, 'locks', `layer-${hex}.lock`), {
      log: this.#log,
      signal,
    })
    try {
      const done = this.#readLayerRecord(layerDir)
      if (done !== undefined) {
        job.budget.take(done.tarBytes)
        return done
      }
      const started = performance.now()
      const blobPath = await client.fetchBlob(
        ref.repository,
        descriptor,
        ref.name,
        blobs,
        `layer ${descriptor.digest}`,
      )
      const downloadedMs = performance.now() - started
      const temporary = join(this.#dir, 'layers', tempName())
      try {
        const treeDir = join(temporary, 'tree')
        await mkdir(treeDir, { recursive: true, mode: 0o700 })
        chmodSync(treeDir, 0o755)
        lchownSync(treeDir, this.#uidOffset, this.#uidOffset)
        const unpacked = await unpackLayer({
          blobPath,
          treeDir,
          diffId,
          uidOffset: this.#uidOffset,
          budget: job.budget,
          maxEntries: maxEntriesPerLayer,
          what,
          signal,
        })
        const record: LayerRecord = {
          formatVersion,
          diffId,
          uidOffset: this.#uidOffset,
          ...unpacked,
          unpackedAt: new Date().toISOString(),
        }
        await writeJsonAtomic(join(temporary, 'layer.json'), record)
        await lock.assertHeld()
        await rename(temporary, layerDir)
        // The tree is what later pulls use: the compressed copy would only double the disk use.
        await rm(blobPath, { force: true })
        job.emit({
          level: 'info',
          message: `layer ${descriptor.digest.slice(0, 19)} (${formatBytes(descriptor.size)}) downloaded in ${(downloadedMs / 1000).toFixed(1)} s, unpacked ${formatBytes(unpacked.tarBytes)} in ${((performance.now() - started - downloadedMs) / 1000).toFixed(1)} s`,
        })
        return record
      } catch (err) {
        await rm(temporary, { recursive: true, force: true })
        if (
          err instanceof ImageRejectedError &&
          err.message.includes('does not match its diffID')
        ) {
          // A blob that hashed right but unpacks wrong was stored damaged or lies: fetch it anew next time.
          await rm(blobPath, { force: true })
        }
        throw err
      }
    } finally {
      await lock.release()
    }
  }

  /** Merges the layers into `imageDir/rootfs` under the image's lock, once. */
  async #buildImage(
    imageDir: string,
    chainId: string,
    diffIds: readonly string[],
    layers: readonly { merge: MergeLayer; record: LayerRecord }[],
    image: string,
    signal: AbortSignal,
  ): Promise<ImageRecord> {
    const hex = digestHex(chainId, image)
    const lock = await acquireBuildLock(join(this.#dir, 'locks', `image-${hex}.lock`), {
      log: this.#log,
      signal,
    })
    try {
      const done = this.#readImageRecord(imageDir)
      if (done !== undefined) {
        return done
      }
      const temporary = join(this.#dir, 'images', tempName())
      try {
        const rootfs = join(temporary, 'rootfs')
        await mkdir(rootfs, { recursive: true, mode: 0o700 })
        chmodSync(rootfs, 0o755)
        lchownSync(rootfs, this.#uidOffset, this.#uidOffset)
        await mergeLayers(
          layers.map((layer) => layer.merge),
          rootfs,
          { signal },
        )
        const { sizeBytes } = await measureTree(rootfs, { signal })
        const record: ImageRecord = {
          formatVersion,
          chainId,
          diffIds: [...diffIds],
          uidOffset: this.#uidOffset,
          sizeBytes,
          warnings: layers.flatMap(({ merge, record: layer }) => droppedWarning(merge.what, layer)),
          builtAt: new Date().toISOString(),
        }
        await writeJsonAtomic(join(temporary, 'image.json'), record)
        await lock.assertHeld()
        await rename(temporary, imageDir)
        return record
      } catch (err) {
        await rm(temporary, { recursive: true, force: true })
        throw err
      }
    } finally {
      await lock.release()
    }
  }

  #readLayerRecord(layerDir: string): LayerRecord | undefined {
    const record = readJsonFile(join(layerDir, 'layer.json')) as LayerRecord | undefined
    return record?.formatVersion === formatVersion ? record : undefined
  }

  #readImageRecord(imageDir: string): ImageRecord | undefined {
    const record = readJsonFile(join(imageDir, 'image.json')) as ImageRecord | undefined
    return record?.formatVersion === formatVersion ? record : undefined
  }

  /** Makes the store's directories once per instance, checks its uid offset, sweeps leftovers. */
  #open(): Promise<BlobStore> {
    this.#ready ??= (async () => {
      mkdirSync(this.#dir, { recursive: true })
      chmodSync(this.#dir, 0o700)
      for (const sub of ['layers', 'images', 'locks']) {
        mkdirSync(join(this.#dir, sub), { recursive: true, mode: 0o700 })
      }
      const blobs = new BlobStore(join(this.#dir, 'blobs', 'sha256'))
      const storePath = join(this.#dir, 'store.json')
      const stored = readJsonFile(storePath) as { uidOffset?: unknown } | undefined
      if (stored === undefined) {
        await writeJsonAtomic(storePath, { formatVersion, uidOffset: this.#uidOffset })
      } else if (stored.uidOffset !== this.#uidOffset) {
        throw new DriverError(
          `the image store ${this.#dir} is owned for uid offset ${String(stored.uidOffset)}, but sandboxes use ${this.#uidOffset}: remove ${this.#dir} (no sandbox may be using it) so that images are pulled again`,
          { details: { dir: this.#dir, stored: stored.uidOffset, wanted: this.#uidOffset } },
        )
      }
      for (const dir of [blobs.dir, join(this.#dir, 'layers'), join(this.#dir, 'images')]) {
        await removeStaleTemps(dir, this.#log)
      }
      return blobs
    })()
    this.#ready.catch(() => {
      this.#ready = undefined
    })
    return this.#ready
  }
}

function droppedWarning(what: string, record: LayerRecord): string[] {
  if (record.dropped.length === 0) {
    return []
  }
  const shown = record.dropped.slice(0, 10).map((d) => `/${d.path} (${d.type})`)
  const more = record.dropped.length - shown.length
  return [
    `${what}: dropped ${record.dropped.length} device node or FIFO entr${record.dropped.length === 1 ? 'y' : 'ies'} (a sandbox has its own /dev): ${shown.join(', ')}${more > 0 ? ` and ${more} more` : ''}`,
  ]
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * 1024
    ? `${(bytes / 1024 / 1024).toFixed(1)} MiB`
    : `${(bytes / 1024).toFixed(1)} KiB`
}
