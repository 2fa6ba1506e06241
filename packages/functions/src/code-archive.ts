/**
 * A function's uploaded code — a tar.gz of its directory (as `ol admin install` sends it), a
 * plain tar, or a single source file — unpacked into a fresh directory under strict rules, since
 * it is untrusted: no absolute or `..` names, no symlink that leaves the tree, no hard links or
 * device nodes, no write through a symlink, setuid bits dropped, and limits on files and bytes
 * that stop a compression bomb early. The upload's sha256 names the version.
 */
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { lstat, mkdir, open, readFile, rm, symlink } from 'node:fs/promises'
import { join, posix } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import { InvalidArgumentError, ResourceExhaustedError, tapChunks } from '@sandcell/shared'
import { shiftOwnership } from '@sandcell/images'
import tar from 'tar-stream'
import { parseFunctionConfig, type FunctionConfig } from './function-config.js'

type Entry = tar.Extract extends AsyncIterable<infer T> ? T : never

export interface CodeLimits {
  /** Bytes of the upload itself (compressed). */
  maxUploadBytes: number
  /** Bytes of all files once unpacked. */
  maxBytes: number
  /** Files, directories and links. */
  maxEntries: number
}

export const defaultCodeLimits: CodeLimits = {
  maxUploadBytes: 64 * 1024 * 1024,
  maxBytes: 256 * 1024 * 1024,
  maxEntries: 10_000,
}

export type FunctionRuntime = 'python' | 'node'

export interface UnpackedCode {
  /** `sha256:<hex>` of the upload as received. */
  digest: string
  uploadBytes: number
  entries: number
  bytes: number
  runtime: FunctionRuntime
  /** The handler file, relative to the code directory. */
  entry: string
  config: FunctionConfig
}

export interface UnpackCodeOptions {
  /** Directory to create (it must not exist) and fill. */
  target: string
  /** Where the upload is spooled while it is hashed. */
  spoolPath: string
  /** Name of a single uploaded file (default `f.py`). */
  fileName?: string
  /** Host id of a sandbox's root: everything written (as root) is shifted to it. */
  uidOffset: number
  limits?: CodeLimits
}

function refuse(reason: string): InvalidArgumentError {
  return new InvalidArgumentError(`the function code is refused: ${reason}`)
}

/** An entry's path without `./`, refusing absolute and `..` names. */
function entryPath(name: string): string {
  if (name.includes('\0') || name.startsWith('/')) {
    throw refuse(`entry ${JSON.stringify(name.slice(0, 200))} has an absolute or invalid name`)
  }
  const parts = name.split('/').filter((part) => part !== '' && part !== '.')
  if (parts.includes('..')) {
    throw refuse(`entry ${JSON.stringify(name.slice(0, 200))} has a ".." component`)
  }
  return parts.join('/')
}

/** Copies the upload to `spoolPath`, hashing and counting it. */
async function spool(
  upload: Readable | AsyncIterable<Uint8Array>,
  spoolPath: string,
  maxBytes: number,
): Promise<{ digest: string; bytes: number }> {
  const hash = createHash('sha256')
  let bytes = 0
  const counter = tapChunks((chunk) => {
    bytes += chunk.length
    if (bytes > maxBytes) {
      throw new ResourceExhaustedError(
        `the upload is larger than ${Math.round(maxBytes / 1048576)} MiB`,
      )
    }
    hash.update(chunk)
  })
  await pipeline(upload, counter, createWriteStream(spoolPath, { mode: 0o600 }))
  return { digest: `sha256:${hash.digest('hex')}`, bytes }
}

async function uploadKind(path: string): Promise<'gzip' | 'tar' | 'file'> {
  const file = await open(path, 'r')
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(512), 0, 512, 0)
    if (bytesRead >= 2 && buffer[0] === 0x1f && buffer[1] === 0x8b) {
      return 'gzip'
    }
    if (bytesRead >= 262 && buffer.subarray(257, 262).toString('latin1') === 'ustar') {
      return 'tar'
    }
    return 'file'
  } finally {
    await file.close()
  }
}

/** Fails when any parent of `path` inside `root` is not a real directory (a symlink). */
async function assertRealParents(root: string, path: string): Promise<void> {
  const parts = path.split('/').slice(0, -1)
  let current = root
  for (const part of parts) {
    current = join(current, part)
    const stats = await lstat(current).catch(() => undefined)
    if (stats === undefined) {
      await mkdir(current, { mode: 0o755 })
      continue
    }
    if (!stats.isDirectory()) {
      throw refuse(
        `entry ${JSON.stringify(path)} goes through ${JSON.stringify(parts.join('/'))}, which is not a directory`,
      )
    }
  }
}

async function writeEntries(
  source: string,
  gzip: boolean,
  target: string,
  limits: CodeLimits,
): Promise<{ entries: number; bytes: number; files: Set<string> }> {
  const extract = tar.extract()
  const input = createReadStream(source)
  const stream = gzip ? input.pipe(createGunzip()) : input
  stream.on('error', (err: Error) => extract.destroy(err))
  stream.pipe(extract)
  let entries = 0
  let bytes = 0
  const files = new Set<string>()
  for await (const entry of extract as AsyncIterable<Entry>) {
    entries++
    if (entries > limits.maxEntries) {
      throw refuse(`it has more than ${limits.maxEntries} entries`)
    }
    const path = entryPath(entry.header.name)
    const { type } = entry.header
    if (path === '') {
      entry.resume()
      continue
    }
    await assertRealParents(target, path)
    const destination = join(target, path)
    switch (type) {
      case 'directory':
        await mkdir(destination, { recursive: true, mode: 0o755 })
        entry.resume()
        break
      case 'file':
      case 'contiguous-file': {
        if (files.has(path)) {
          await rm(destination, { force: true })
        }
        const existing = await lstat(destination).catch(() => undefined)
        if (existing !== undefined) {
          throw refuse(`entry ${JSON.stringify(path)} would replace a directory or link`)
        }
        const mode = (entry.header.mode & 0o111) === 0 ? 0o644 : 0o755
        await pipeline(
          entry,
          tapChunks((chunk) => {
            bytes += chunk.length
            if (bytes > limits.maxBytes) {
              throw new ResourceExhaustedError(
                `the function code unpacks to more than ${Math.round(limits.maxBytes / 1048576)} MiB`,
              )
            }
          }),
          createWriteStream(destination, { mode, flags: 'wx' }),
        )
        files.add(path)
        break
      }
      case 'symlink': {
        const link = entry.header.linkname
        const resolved = posix.normalize(posix.join(posix.dirname(path), link))
        if (link.startsWith('/') || resolved === '..' || resolved.startsWith('../')) {
          throw refuse(
            `symlink ${JSON.stringify(path)} points outside the function (${JSON.stringify(link)})`,
          )
        }
        await symlink(link, destination)
        entry.resume()
        break
      }
      case 'link':
        throw refuse(
          `entry ${JSON.stringify(path)} is a hard link, which function code may not hold`,
        )
      case 'block-device':
      case 'character-device':
      case 'fifo':
        throw refuse(`entry ${JSON.stringify(path)} is a ${type}, which function code may not hold`)
    }
  }
  return { entries, bytes, files }
}

/** The runtime and handler file a code directory holds. */
async function detectRuntime(
  target: string,
  files: ReadonlySet<string>,
  config: FunctionConfig,
): Promise<{ runtime: FunctionRuntime; entry: string }> {
  const pythonEntry = config.environment?.OL_ENTRY_FILE ?? 'f.py'
  if (!pythonEntry.endsWith('.py') || entryPath(pythonEntry) !== pythonEntry) {
    throw refuse(
      `OL_ENTRY_FILE ${JSON.stringify(pythonEntry)} must name a .py file in the function`,
    )
  }
  if (files.has(pythonEntry)) {
    return { runtime: 'python', entry: pythonEntry }
  }
  for (const candidate of ['index.mjs', 'index.js']) {
    if (files.has(candidate)) {
      return { runtime: 'node', entry: candidate }
    }
  }
  if (files.has('package.json')) {
    const manifest = JSON.parse(await readFile(join(target, 'package.json'), 'utf8')) as {
      main?: unknown
    }
    if (typeof manifest.main === 'string' && files.has(entryPath(manifest.main))) {
      return { runtime: 'node', entry: entryPath(manifest.main) }
    }
  }
  throw refuse(
    `no handler: expected ${pythonEntry} (Python, with f(event) or an app) or index.mjs (Node.js, exporting handler)`,
  )
}

/**
 * Unpacks an upload into `options.target`.
 * @throws InvalidArgumentError naming the refused entry or the missing handler,
 *   ResourceExhaustedError past a limit; nothing is left at `target` after a failure
 */
export async function unpackFunctionCode(
  upload: Readable | AsyncIterable<Uint8Array>,
  options: UnpackCodeOptions,
): Promise<UnpackedCode> {
  const limits = options.limits ?? defaultCodeLimits
  await mkdir(options.target, { mode: 0o755 })
  try {
    const { digest, bytes: uploadBytes } = await spool(
      upload,
      options.spoolPath,
      limits.maxUploadBytes,
    )
    const kind = await uploadKind(options.spoolPath)
    let unpacked: { entries: number; bytes: number; files: Set<string> }
    if (kind === 'file') {
      const name = entryPath(options.fileName ?? 'f.py')
      if (name === '' || name.includes('/')) {
        throw refuse(
          `a single file needs a plain file name (got ${JSON.stringify(options.fileName)})`,
        )
      }
      await pipeline(
        createReadStream(options.spoolPath),
        createWriteStream(join(options.target, name), { mode: 0o644, flags: 'wx' }),
      )
      unpacked = { entries: 1, bytes: uploadBytes, files: new Set([name]) }
    } else {
      unpacked = await writeEntries(options.spoolPath, kind === 'gzip', options.target, limits)
    }
    const configText = unpacked.files.has('ol.yaml')
      ? await readFile(join(options.target, 'ol.yaml'), 'utf8')
      : undefined
    const config = parseFunctionConfig(configText)
    const { runtime, entry } = await detectRuntime(options.target, unpacked.files, config)
    await shiftOwnership(options.target, { offset: options.uidOffset })
    return {
      digest,
      uploadBytes,
      entries: unpacked.entries,
      bytes: unpacked.bytes,
      runtime,
      entry,
      config,
    }
  } catch (err) {
    await rm(options.target, { recursive: true, force: true })
    throw err
  } finally {
    await rm(options.spoolPath, { force: true })
  }
}
