/**
 * A COPY step's files, as the SDK uploaded them (a tar of paths relative to the build context,
 * globs already expanded), mapped onto the step's destination with Docker's rules: a directory's
 * contents merge into the destination, a single file lands at it (or in it, when it is a
 * directory), the static part of a glob is cut off. The result is a tar ready for the agent's
 * archive upload, entries named relative to the directory it is extracted into.
 */
import { createReadStream, createWriteStream } from 'node:fs'
import { open } from 'node:fs/promises'
import { posix } from 'node:path'
import { createGunzip } from 'node:zlib'
import { InvalidArgumentError } from '@sandcell/shared'
import tar from 'tar-stream'

type Entry = tar.Extract extends AsyncIterable<infer T> ? T : never
type Header = tar.Header

export interface CopyTarget {
  /** Absolute directory inside the sandbox the repacked archive is extracted into. */
  root: string
  /** Archive entries found and kept. */
  entries: number
}

/** An archive entry name without `./`, leading or trailing slashes. */
function normalizeName(name: string): string {
  let result = name
  while (result.startsWith('./')) {
    result = result.slice(2)
  }
  return result.replace(/^\/+/, '').replace(/\/+$/, '')
}

async function isGzip(path: string): Promise<boolean> {
  const file = await open(path, 'r')
  try {
    const { bytesRead, buffer } = await file.read(Buffer.alloc(2), 0, 2, 0)
    return bytesRead === 2 && buffer[0] === 0x1f && buffer[1] === 0x8b
  } finally {
    await file.close()
  }
}

/** The archive's entries, decompressed when gzip. */
async function* readEntries(path: string): AsyncGenerator<Entry> {
  const extract = tar.extract()
  const source = createReadStream(path)
  const input = (await isGzip(path)) ? source.pipe(createGunzip()) : source
  input.on('error', (err: Error) => extract.destroy(err))
  input.pipe(extract)
  yield* extract
}

async function listNames(path: string): Promise<Map<string, Header['type']>> {
  const names = new Map<string, Header['type']>()
  for await (const entry of readEntries(path)) {
    names.set(normalizeName(entry.header.name), entry.header.type)
    entry.resume()
  }
  return names
}

const globChars = /[*?[]/

export interface PlanCopyOptions {
  /** The step's source, as in its args (relative to the build context). */
  src: string
  /** The step's destination; relative ones start at `baseDir`. */
  dest: string
  baseDir: string
  /** Whether a path inside the sandbox is an existing directory. */
  isDirectory: (path: string) => Promise<boolean>
}

/**
 * Where the files go and how each entry is renamed (undefined: left out).
 * @throws InvalidArgumentError when the source matches nothing in the upload
 */
async function planCopy(
  archive: string,
  options: PlanCopyOptions,
): Promise<{ root: string; rename: (name: string) => string | undefined }> {
  const names = await listNames(archive)
  const src = normalizeName(options.src)
  const dest = posix.resolve(options.baseDir, options.dest)
  const under = (prefix: string) => (name: string) =>
    name.startsWith(prefix) && name.length > prefix.length ? name.slice(prefix.length) : undefined
  if (src === '' || src === '.') {
    return { root: dest, rename: (name) => (name === '' || name === '.' ? undefined : name) }
  }
  const glob = globChars.exec(src)
  if (glob !== null) {
    const staticPart = src.slice(0, glob.index)
    return { root: dest, rename: under(staticPart.slice(0, staticPart.lastIndexOf('/') + 1)) }
  }
  const type = names.get(src)
  const isDir = type === 'directory' || [...names.keys()].some((name) => name.startsWith(`${src}/`))
  if (isDir) {
    return { root: dest, rename: under(`${src}/`) }
  }
  if (type === undefined) {
    throw new InvalidArgumentError(
      `COPY ${options.src}: the uploaded files do not contain ${JSON.stringify(options.src)}`,
    )
  }
  const intoDir = options.dest.endsWith('/') || (await options.isDirectory(dest))
  const target = intoDir ? posix.join(dest, posix.basename(src)) : dest
  return {
    root: posix.dirname(target),
    rename: (name) => (name === src ? posix.basename(target) : undefined),
  }
}

/**
 * Writes to `output` the archive at `archive` renamed for its destination.
 * @throws InvalidArgumentError for a source the upload lacks, a `..` name, or a hard link to a
 *   file the step does not copy
 */
export async function prepareCopyArchive(
  archive: string,
  output: string,
  options: PlanCopyOptions,
): Promise<CopyTarget> {
  const { root, rename } = await planCopy(archive, options)
  const pack = tar.pack()
  const file = createWriteStream(output, { mode: 0o600 })
  const written = new Promise<void>((resolve, reject) => {
    file.on('close', resolve)
    file.on('error', reject)
    pack.on('error', reject)
  })
  pack.pipe(file)
  let entries = 0
  try {
    for await (const entry of readEntries(archive)) {
      const name = normalizeName(entry.header.name)
      const renamed = rename(name)
      if (renamed === undefined) {
        entry.resume()
        continue
      }
      if (renamed.split('/').includes('..')) {
        throw new InvalidArgumentError(`COPY ${options.src}: the upload has an entry ${name}`)
      }
      const header: Header = { ...entry.header, name: renamed }
      if (entry.header.type === 'link') {
        const target = rename(normalizeName(entry.header.linkname))
        if (target === undefined) {
          throw new InvalidArgumentError(
            `COPY ${options.src}: ${name} is a hard link to a file this step does not copy`,
          )
        }
        header.linkname = target
      }
      await new Promise<void>((resolve, reject) => {
        entry.on('error', reject)
        entry.pipe(
          pack.entry(header, (err) => {
            if (err) {
              reject(err)
            } else {
              resolve()
            }
          }),
        )
      })
      entries++
    }
    pack.finalize()
  } catch (err) {
    pack.destroy(err as Error)
    await written.catch(() => undefined)
    throw err
  }
  await written
  return { root, entries }
}

/** The file as an upload body. */
export function fileBody(path: string): AsyncIterable<Uint8Array> {
  return createReadStream(path)
}
