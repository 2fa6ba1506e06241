/**
 * Unpacks one layer blob (gzip or plain tar) into a directory of its own, writing every entry
 * itself under rules that keep a hostile layer inside that directory:
 *
 * - names: a leading `./` is dropped; absolute paths, `..` components and NUL bytes fail the
 *   pull, naming the entry;
 * - nothing is written through a symlink: every parent of an entry must be a real directory of
 *   this layer (checked with lstat, missing ones made 0755), files are created with O_EXCL and
 *   O_NOFOLLOW, anything in the way is removed first;
 * - symlinks are kept as they are: absolute targets are normal in images, and they resolve
 *   inside the sandbox's root at run time, never on the host;
 * - a hard link to a regular file of this layer becomes a link(); to a path this layer lacks
 *   it is recorded and resolved against the lower layers when an image is merged; to a
 *   directory, a symlink or through one, it fails;
 * - device nodes and FIFOs are dropped and reported (a sandbox has its own /dev);
 * - setuid and setgid bits are kept: sandboxes mount their root nosuid and run in a user
 *   namespace, so the bits grant nothing; extended attributes (file capabilities, ACLs) are not
 *   written, for the same reason;
 * - owners above 65535 fail (a sandbox maps 65536 ids); the rest are stored shifted by the
 *   uid offset, as the built-in templates are;
 * - whiteouts and opaque markers are not written: they are returned for `layer.json`;
 * - the uncompressed size (the image-wide budget) and the entry count are limited while
 *   reading, so a compression bomb stops early.
 *
 * The caller unpacks into a temporary directory and removes it on failure.
 */
import { createHash } from 'node:crypto'
import {
  closeSync,
  constants,
  createReadStream,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  chmodSync,
  openSync,
  readSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
  type Stats,
} from 'node:fs'
import { join } from 'node:path'
import { pipeline, type Readable, type Transform } from 'node:stream'
import { finished } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import {
  DriverError,
  ImageRejectedError,
  ResourceExhaustedError,
  errorMessage,
  isSandcellError,
  tapChunks,
} from '@sandcell/shared'
import { extract as tarExtract, type Header } from 'tar-stream'
import { idRangeSize } from '../core/ownership.js'
import {
  ancestorsOf,
  classifyWhiteout,
  normalizeEntryPath,
  rejectEntry,
} from './layer-entry-path.js'
import { lstatIfExists } from './lstat.js'

/** What unpacking found, kept in `layer.json` beside the tree. */
export interface UnpackedLayer {
  /** Tar entries read. */
  entries: number
  /** Size of the uncompressed tar. */
  tarBytes: number
  /** Bytes of regular files written (hard links not counted again). */
  fileBytes: number
  /** Paths whose lower-layer content this layer deletes. */
  whiteouts: string[]
  /** Directories whose lower-layer content this layer hides. */
  opaqueDirs: string[]
  /** Hard links to paths this layer does not have, resolved against the layers below. */
  crossLayerLinks: { path: string; target: string }[]
  /** Directories made only because an entry lay inside them: they keep a lower layer's owner and mode. */
  implicitDirs: string[]
  /** Entries not written: device nodes and FIFOs. */
  dropped: { path: string; type: string }[]
}

/** The uncompressed bytes an image may still unpack, shared by its layers. */
export class UnpackBudget {
  #remaining: number
  readonly #limitMiB: number
  readonly #image: string

  constructor(limitMiB: number, image: string) {
    this.#limitMiB = limitMiB
    this.#remaining = limitMiB * 1024 * 1024
    this.#image = image
  }

  /** @throws ResourceExhaustedError naming the limit once more than it is taken */
  take(bytes: number): void {
    this.#remaining -= bytes
    if (this.#remaining < 0) {
      throw new ResourceExhaustedError(
        `image ${this.#image} is larger than images.maxImageMiB (${this.#limitMiB} MiB) when unpacked; raise the limit or use a smaller image`,
        { details: { image: this.#image, maxImageMiB: this.#limitMiB } },
      )
    }
  }
}

export interface UnpackLayerOptions {
  /** The compressed (or plain) layer blob. */
  blobPath: string
  /** An empty directory the tree is written into; it becomes the layer's root. */
  treeDir: string
  /** The layer's diffID from the image config: the sha256 of the uncompressed tar. */
  diffId: string
  uidOffset: number
  budget: UnpackBudget
  /** @default 500000 */
  maxEntries?: number
  /** Names the layer in errors: "layer 2/3 (sha256:…) of image …". */
  what: string
  signal?: AbortSignal
}

const defaultMaxEntries = 500_000

/**
 * Unpacks a layer blob into `treeDir` and checks its diffID.
 * @throws ImageRejectedError for a hostile or malformed entry, zstd, bad gzip or tar, a diffID
 * mismatch; ResourceExhaustedError past the size or entry limit; DriverError when the disk
 * fails; the signal's reason when aborted
 */
export async function unpackLayer(options: UnpackLayerOptions): Promise<UnpackedLayer> {
  const { what, signal } = options
  signal?.throwIfAborted()
  const compression = sniffCompression(options.blobPath, what)
  const hash = createHash('sha256')
  let tarBytes = 0
  const meter = tapChunks((chunk) => {
    tarBytes += chunk.length
    options.budget.take(chunk.length)
    hash.update(chunk)
  })
  const extract = tarExtract()
  const file = createReadStream(options.blobPath, { highWaterMark: 1024 * 1024 })
  const stages: (Readable | Transform)[] =
    compression === 'gzip' ? [file, createGunzip(), meter] : [file, meter]
  const tarStream = pipeline(stages, (err) => {
    if (err) {
      extract.destroy(err)
    }
  }) as unknown as Readable
  tarStream.pipe(extract)
  const onAbort = (): void => {
    extract.destroy(signal?.reason as Error)
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  const writer = new LayerWriter(options.treeDir, options.uidOffset, what)
  const maxEntries = options.maxEntries ?? defaultMaxEntries
  try {
    for await (const entry of extract) {
      if (writer.entries >= maxEntries) {
        throw new ResourceExhaustedError(
          `${what} has more than ${maxEntries} entries; sandcell refuses such layers`,
          { details: { maxEntries } },
        )
      }
      await writer.add(entry)
    }
    await finished(tarStream)
  } catch (err) {
    signal?.throwIfAborted()
    if (isSandcellError(err)) {
      throw err
    }
    throw new ImageRejectedError(
      `${what} cannot be read as a ${compression === 'gzip' ? 'gzip-compressed ' : ''}tar: ${errorMessage(err)}`,
      { cause: err },
    )
  } finally {
    signal?.removeEventListener('abort', onAbort)
    file.destroy()
    tarStream.destroy()
  }
  const actual = `sha256:${hash.digest('hex')}`
  if (actual !== options.diffId) {
    throw new ImageRejectedError(
      `${what} does not match its diffID: the image config says ${options.diffId}, the uncompressed layer hashes to ${actual}`,
      { details: { diffId: options.diffId, actual } },
    )
  }
  return { ...writer.finish(), tarBytes }
}

/** gzip or plain tar, from the first bytes; zstd is refused with a way out. */
function sniffCompression(blobPath: string, what: string): 'gzip' | 'none' {
  const head = Buffer.alloc(4)
  const fd = openSync(blobPath, 'r')
  try {
    readSync(fd, head, 0, 4, 0)
  } finally {
    closeSync(fd)
  }
  if (head[0] === 0x1f && head[1] === 0x8b) {
    return 'gzip'
  }
  if (head.readUInt32LE(0) === 0xfd2fb528) {
    throw new ImageRejectedError(
      `${what} is zstd-compressed, which sandcell does not support; use an image built with gzip layers (e.g. docker buildx --output type=image,compression=gzip)`,
    )
  }
  return 'none'
}

type Entry = AsyncIterable<unknown> & { header: Header }
type PaxHeaders = Omit<Header, 'pax'> & { pax?: Record<string, string> | null }

/** Writes entries under the rules in the module comment. */
class LayerWriter {
  entries = 0
  readonly #root: string
  readonly #uidOffset: number
  readonly #what: string
  /** Relative paths known to be real directories of this layer ('' is the root). */
  readonly #knownDirs = new Set<string>([''])
  readonly #implicitDirs = new Set<string>()
  readonly #dirTimes = new Map<string, Date>()
  readonly #whiteouts = new Set<string>()
  readonly #opaqueDirs = new Set<string>()
  readonly #crossLayerLinks = new Map<string, string>()
  readonly #dropped: { path: string; type: string }[] = []
  #fileBytes = 0

  constructor(root: string, uidOffset: number, what: string) {
    this.#root = root
    this.#uidOffset = uidOffset
    this.#what = what
  }

  async add(entry: Entry): Promise<void> {
    this.entries += 1
    const header = entry.header as PaxHeaders
    const name = header.name
    const path = normalizeEntryPath(name, this.#what)
    const type = header.type
    // Docker reads whiteouts by name alone, whatever their tar type.
    const whiteout = path === '' ? undefined : classifyWhiteout(path, this.#what)
    if (whiteout !== undefined) {
      await drain(entry)
      this.#recordWhiteout(path, name, whiteout)
      return
    }
    if (type === 'file' || type === 'contiguous-file') {
      await this.#writeFile(path, name, header, entry)
      return
    }
    await drain(entry)
    if (path === '' && type !== 'directory') {
      throw rejectEntry(name, this.#what, 'it replaces the layer root with a non-directory')
    }
    switch (type) {
      case 'directory':
        this.#writeDirectory(path, name, header)
        return
      case 'symlink':
        this.#writeSymlink(path, name, header)
        return
      case 'link':
        this.#writeHardLink(path, name, header)
        return
      case 'character-device':
      case 'block-device':
      case 'fifo':
        this.#dropped.push({ path, type })
        return
      default:
        throw rejectEntry(name, this.#what, `its tar type (${String(type)}) is not supported`)
    }
  }

  finish(): Omit<UnpackedLayer, 'tarBytes'> {
    // Directory times last: every entry written inside a directory changed its mtime.
    for (const [path, time] of this.#dirTimes) {
      const absolute = join(this.#root, path)
      this.#fs(path, () => {
        if (lstatSync(absolute).isDirectory()) {
          utimesSync(absolute, time, time)
        }
      })
    }
    return {
      entries: this.entries,
      fileBytes: this.#fileBytes,
      whiteouts: [...this.#whiteouts],
      opaqueDirs: [...this.#opaqueDirs],
      crossLayerLinks: [...this.#crossLayerLinks].map(([path, target]) => ({ path, target })),
      implicitDirs: [...this.#implicitDirs],
      dropped: this.#dropped,
    }
  }

  #recordWhiteout(
    path: string,
    name: string,
    whiteout: NonNullable<ReturnType<typeof classifyWhiteout>>,
  ): void {
    switch (whiteout.kind) {
      case 'metadata':
        return
      case 'opaque':
        // The marker lives in the directory: that directory is part of this layer.
        this.#ensureParents(path, name)
        this.#opaqueDirs.add(whiteout.dir)
        return
      case 'whiteout':
        this.#ensureParents(path, name)
        this.#whiteouts.add(whiteout.target)
        return
    }
  }

  async #writeFile(path: string, name: string, header: PaxHeaders, entry: Entry): Promise<void> {
    if (path === '') {
      throw rejectEntry(name, this.#what, 'it replaces the layer root with a file')
    }
    const { uid, gid } = this.#owner(header, name)
    this.#ensureParents(path, name)
    this.#clear(path, false)
    const absolute = join(this.#root, path)
    const fd = this.#fs(path, () =>
      openSync(
        absolute,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      ),
    )
    try {
      for await (const chunk of entry) {
        const bytes = chunk as Buffer
        let offset = 0
        while (offset < bytes.length) {
          offset += this.#fs(path, () => writeSync(fd, bytes, offset))
        }
        this.#fileBytes += bytes.length
      }
      const mtime = entryTime(header)
      this.#fs(path, () => {
        // chown clears setuid/setgid: the mode goes on after it.
        fchownSync(fd, uid, gid)
        fchmodSync(fd, modeOf(header))
        futimesSync(fd, mtime, mtime)
      })
    } finally {
      closeSync(fd)
    }
  }

  #writeDirectory(path: string, name: string, header: PaxHeaders): void {
    const { uid, gid } = this.#owner(header, name)
    const absolute = join(this.#root, path)
    if (path !== '') {
      this.#ensureParents(path, name)
      if (this.#clear(path, true) === 'absent') {
        this.#fs(path, () => mkdirSync(absolute, { mode: 0o700 }))
      }
      this.#knownDirs.add(path)
      this.#implicitDirs.delete(path)
    }
    this.#fs(path, () => {
      lchownSync(absolute, uid, gid)
      chmodSync(absolute, modeOf(header))
    })
    this.#dirTimes.set(path, entryTime(header))
  }

  #writeSymlink(path: string, name: string, header: PaxHeaders): void {
    const target = header.linkname ?? ''
    if (target === '' || target.includes('\0')) {
      throw rejectEntry(name, this.#what, 'it is a symbolic link without a target')
    }
    const { uid, gid } = this.#owner(header, name)
    this.#ensureParents(path, name)
    this.#clear(path, false)
    const absolute = join(this.#root, path)
    const mtime = entryTime(header)
    this.#fs(path, () => {
      symlinkSync(target, absolute)
      lchownSync(absolute, uid, gid)
      lutimesSync(absolute, mtime, mtime)
    })
  }

  #writeHardLink(path: string, name: string, header: PaxHeaders): void {
    const linkname = header.linkname ?? ''
    if (linkname === '') {
      throw rejectEntry(name, this.#what, 'it is a hard link without a target')
    }
    const target = normalizeEntryPath(linkname, `${this.#what}: hard link ${JSON.stringify(name)}`)
    if (target === '' || target === path) {
      throw rejectEntry(name, this.#what, `it is a hard link to ${JSON.stringify(linkname)}`)
    }
    this.#ensureParents(path, name)
    const found = this.#lookup(target)
    if (found.kind === 'blocked') {
      throw rejectEntry(
        name,
        this.#what,
        `it is a hard link to ${JSON.stringify(linkname)}, which passes through ${found.at}, not a directory`,
      )
    }
    if (found.kind === 'present' && !found.stats.isFile()) {
      throw rejectEntry(
        name,
        this.#what,
        `it is a hard link to ${JSON.stringify(linkname)}, which is not a regular file`,
      )
    }
    this.#clear(path, false)
    if (found.kind === 'absent') {
      this.#crossLayerLinks.set(path, target)
      return
    }
    this.#fs(path, () => linkSync(join(this.#root, target), join(this.#root, path)))
  }

  /** Where `path` stands in this layer, without following any link. */
  #lookup(
    path: string,
  ): { kind: 'present'; stats: Stats } | { kind: 'absent' } | { kind: 'blocked'; at: string } {
    for (const ancestor of ancestorsOf(path)) {
      if (this.#knownDirs.has(ancestor)) {
        continue
      }
      const stats = lstatIfExists(join(this.#root, ancestor))
      if (stats === undefined) {
        return { kind: 'absent' }
      }
      if (!stats.isDirectory()) {
        return { kind: 'blocked', at: ancestor }
      }
    }
    const stats = lstatIfExists(join(this.#root, path))
    return stats === undefined ? { kind: 'absent' } : { kind: 'present', stats }
  }

  /** Makes every parent of `path` a real directory of this layer, refusing links and files. */
  #ensureParents(path: string, name: string): void {
    for (const ancestor of ancestorsOf(path)) {
      if (this.#knownDirs.has(ancestor)) {
        continue
      }
      const absolute = join(this.#root, ancestor)
      const stats = lstatIfExists(absolute)
      if (stats === undefined) {
        this.#fs(ancestor, () => {
          mkdirSync(absolute, { mode: 0o755 })
          chmodSync(absolute, 0o755)
          lchownSync(absolute, this.#uidOffset, this.#uidOffset)
        })
        this.#implicitDirs.add(ancestor)
      } else if (stats.isSymbolicLink()) {
        throw rejectEntry(
          name,
          this.#what,
          `it would be written through the symbolic link ${ancestor} (-> ${readlinkSync(absolute)})`,
        )
      } else if (!stats.isDirectory()) {
        throw rejectEntry(name, this.#what, `its parent ${ancestor} is not a directory`)
      }
      this.#knownDirs.add(ancestor)
    }
  }

  /**
   * Removes what is at `path` in this layer so that a new entry can take its place; a directory
   * stays when the new entry is one too (tar semantics: its attributes are updated).
   */
  #clear(path: string, keepDirectory: boolean): 'absent' | 'kept' | 'removed' {
    this.#crossLayerLinks.delete(path)
    const absolute = join(this.#root, path)
    const stats = lstatIfExists(absolute)
    if (stats === undefined) {
      return 'absent'
    }
    if (stats.isDirectory()) {
      if (keepDirectory) {
        return 'kept'
      }
      this.#fs(path, () => rmSync(absolute, { recursive: true, force: true }))
      const prefix = `${path}/`
      for (const set of [this.#knownDirs, this.#implicitDirs]) {
        for (const known of set) {
          if (known === path || known.startsWith(prefix)) {
            set.delete(known)
          }
        }
      }
      for (const known of this.#dirTimes.keys()) {
        if (known === path || known.startsWith(prefix)) {
          this.#dirTimes.delete(known)
        }
      }
      for (const link of this.#crossLayerLinks.keys()) {
        if (link.startsWith(prefix)) {
          this.#crossLayerLinks.delete(link)
        }
      }
      return 'removed'
    }
    this.#fs(path, () => unlinkSync(absolute))
    return 'removed'
  }

  #owner(header: PaxHeaders, name: string): { uid: number; gid: number } {
    // PAX records carry ids too large for the octal fields; they win when present.
    const uid = Number(header.pax?.uid ?? header.uid ?? 0)
    const gid = Number(header.pax?.gid ?? header.gid ?? 0)
    for (const [kind, id] of [
      ['uid', uid],
      ['gid', gid],
    ] as const) {
      if (!Number.isInteger(id) || id < 0 || id >= idRangeSize) {
        throw rejectEntry(
          name,
          this.#what,
          `it is owned by ${kind} ${id}; images may use ids 0-${idRangeSize - 1} only (a sandbox maps ${idRangeSize})`,
        )
      }
    }
    return { uid: this.#uidOffset + uid, gid: this.#uidOffset + gid }
  }

  /** Runs a file system call for the entry at `path`, turning a failure into a DriverError. */
  #fs<T>(path: string, call: () => T): T {
    try {
      return call()
    } catch (err) {
      throw new DriverError(
        `${this.#what}: cannot write ${JSON.stringify(path)}: ${errorMessage(err)}`,
        { cause: err, details: { path } },
      )
    }
  }
}

function modeOf(header: PaxHeaders): number {
  return (header.mode ?? 0o644) & 0o7777
}

function entryTime(header: PaxHeaders): Date {
  const pax = Number(header.pax?.mtime)
  if (Number.isFinite(pax)) {
    return new Date(pax * 1000)
  }
  return header.mtime instanceof Date && Number.isFinite(header.mtime.getTime())
    ? header.mtime
    : new Date(0)
}

/** Reads past an entry's content: the parser reaches the next header only after it. */
async function drain(entry: Entry): Promise<void> {
  const iterator = entry[Symbol.asyncIterator]()
  while (!(await iterator.next()).done) {
    // Nothing to keep.
  }
}
