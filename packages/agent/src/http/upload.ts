/**
 * `POST /files`: writes uploaded files as the requesting user, streamed straight to disk. Accepts
 * envd's two forms: multipart (parts named `file`, the part's filename is the target path unless
 * the `path` query names it) and a raw `application/octet-stream` body (optionally gzip). The
 * `X-Metadata-<key>` headers become every written file's whole metadata (see file-metadata.ts).
 */
import { closeSync, createWriteStream, mkdirSync, openSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { posix } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { InvalidArgumentError, SandcellError } from '@sandcell/shared'
import type busboyFunction from 'busboy'
import { asUser, resolvePath, type FileOperationContext } from '../filesystem/file-operations.js'
import {
  metadataFromHeaders,
  readMetadata,
  replaceMetadata,
  validateMetadata,
  type FileMetadata,
} from '../filesystem/file-metadata.js'
import { fromNodeError } from '../filesystem/node-errors.js'
import { expandUserPath } from '../filesystem/user-paths.js'
import type { SandboxUser } from '../process/users.js'
import { sendJson } from './http-response.js'

/** envd's upload response entry; `metadata` as stored, absent when there is none. */
interface UploadedFile {
  name: string
  type: 'file'
  path: string
  metadata?: FileMetadata
}

/** Most parts one multipart upload may carry. */
const maxParts = 10_000

type Busboy = typeof busboyFunction
let busboyModule: Promise<Busboy> | undefined

/** busboy is only needed for multipart uploads: loaded on first use. */
async function loadBusboy(): Promise<Busboy> {
  busboyModule ??= import('busboy').then((module) => module.default)
  return busboyModule
}

/** What an upload needs besides the request. */
export interface UploadContext {
  ops: FileOperationContext
  user: SandboxUser
  defaultWorkdir: string | undefined
  /** The `path` query parameter, if given. */
  queryPath: string | undefined
}

/** An upload's context with what its headers say. */
interface UploadRequest extends UploadContext {
  metadata: FileMetadata
}

/**
 * Handles an upload and answers with the JSON list of written files.
 * @throws SandcellError (400 bad request, 403 permission, 404, 507 disk full…) before or while
 *   writing; files written before a failure stay, like envd.
 */
export async function receiveUpload(
  req: IncomingMessage,
  res: ServerResponse,
  context: UploadContext,
): Promise<void> {
  const metadata = metadataFromHeaders(req.headersDistinct)
  validateMetadata(metadata)
  const request: UploadRequest = { ...context, metadata }
  const body = decodedBody(req)
  const mediaType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? ''
  let files: UploadedFile[]
  if (mediaType === 'application/octet-stream') {
    if (context.queryPath === undefined || context.queryPath === '') {
      throw new InvalidArgumentError('path query parameter is required for raw body upload')
    }
    files = [await writeUpload(request, context.queryPath, body)]
  } else if (mediaType.startsWith('multipart/')) {
    files = await receiveMultipart(req, body, request)
  } else {
    throw new InvalidArgumentError(
      `unsupported content type: ${JSON.stringify(mediaType)}, expected multipart/form-data or application/octet-stream`,
    )
  }
  sendJson(res, 200, files)
}

/** The request body, gunzipped when `Content-Encoding: gzip`. */
function decodedBody(req: IncomingMessage): Readable {
  const encoding = (req.headers['content-encoding'] ?? '').trim().toLowerCase()
  if (encoding === '' || encoding === 'identity') {
    return req
  }
  if (encoding === 'gzip') {
    const gunzip = createGunzip()
    req.pipe(gunzip)
    req.on('error', (err) => gunzip.destroy(err))
    return gunzip
  }
  throw new InvalidArgumentError(`unsupported Content-Encoding: ${encoding}, supported: [gzip]`)
}

/**
 * Creates the parents (owned by the user), opens the target for writing and replaces its metadata
 * through the fd (so a path swapped for a symlink meanwhile cannot redirect it), all as the user.
 * Returns the metadata as stored. The metadata goes first because the write stream closes the fd.
 */
function openTarget(
  request: UploadRequest,
  requested: string,
): { fd: number; path: string; metadata: FileMetadata | undefined } {
  const path = expandUserPath(requested, request.user, request.defaultWorkdir)
  return asUser(request.ops, 'write', path, () => {
    const resolved = resolvePath(request.ops, path)
    mkdirSync(posix.dirname(resolved.hostPath), { recursive: true, mode: 0o755 })
    // 0o666 minus the agent's umask (022), like envd: the user's file, world-readable.
    const fd = openSync(resolved.hostPath, 'w', 0o666)
    try {
      replaceMetadata(fd, request.metadata)
      return { fd, path, metadata: readMetadata(fd) }
    } catch (err) {
      closeSync(fd)
      throw err
    }
  })
}

/**
 * Pipes `source` into `sink` until the sink has flushed. Unlike stream.pipeline, a failing sink
 * (ENOSPC) does not destroy the source: that would reset the request's socket under a client
 * still sending, which then sees a broken pipe instead of our 507. Node's HTTP server reads and
 * drops what is left of the body once the answer is sent.
 */
function copyKeepingSource(source: Readable, sink: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void => {
      source.unpipe(sink)
      sink.destroy()
      reject(err)
    }
    source.once('error', fail)
    sink.once('error', fail)
    sink.once('finish', () => {
      source.off('error', fail)
      resolve()
    })
    source.pipe(sink)
  })
}

/** Streams `source` into the file at `requested` (an fd opened as the user). */
async function writeUpload(
  request: UploadRequest,
  requested: string,
  source: Readable,
): Promise<UploadedFile> {
  const { fd, path, metadata } = openTarget(request, requested)
  let sink
  try {
    sink = createWriteStream('', { fd, autoClose: true })
  } catch (err) {
    closeSync(fd)
    throw err
  }
  try {
    await copyKeepingSource(source, sink)
  } catch (err) {
    throw fromNodeError(err, { op: 'write', path })
  }
  return {
    name: posix.basename(path),
    type: 'file',
    path,
    ...(metadata === undefined ? {} : { metadata }),
  }
}

/** Writes each `file` part in order; other fields are skipped. */
async function receiveMultipart(
  req: IncomingMessage,
  body: Readable,
  context: UploadRequest,
): Promise<UploadedFile[]> {
  const busboy = await loadBusboy()
  let parser: ReturnType<Busboy>
  try {
    parser = busboy({
      headers: req.headers,
      preservePath: true, // the filename is the whole target path
      defParamCharset: 'utf8',
      limits: { parts: maxParts, files: maxParts },
    })
  } catch (err) {
    throw new InvalidArgumentError(`invalid multipart request: ${(err as Error).message}`, {
      cause: err,
    })
  }
  const written: UploadedFile[] = []
  const seen = new Set<string>()
  let chain = Promise.resolve()
  let failure: unknown
  const fail = (err: unknown): void => {
    failure ??= err
  }
  parser.on('file', (field, stream, info) => {
    if (field !== 'file' || failure !== undefined) {
      stream.resume()
      return
    }
    // Parts arrive one after another; each is written before the next is read (busboy waits).
    chain = chain.then(async () => {
      if (failure !== undefined) {
        stream.resume()
        return
      }
      try {
        const requested = context.queryPath ?? info.filename ?? ''
        if (requested === '') {
          throw new InvalidArgumentError(
            'a file part has no filename and the path query parameter is missing',
          )
        }
        const target = expandUserPath(requested, context.user, context.defaultWorkdir)
        if (seen.has(target)) {
          throw new InvalidArgumentError(
            `you cannot upload multiple files to the same path '${target}' in one upload request`,
          )
        }
        seen.add(target)
        written.push(await writeUpload(context, requested, stream))
      } catch (err) {
        stream.resume()
        fail(err)
      }
    })
  })
  const finished = new Promise<void>((resolve) => {
    parser.once('close', resolve)
    parser.once('error', (err) => {
      fail(
        new InvalidArgumentError(`invalid multipart body: ${(err as Error).message}`, {
          cause: err,
        }),
      )
      resolve()
    })
    parser.once('partsLimit', () =>
      fail(new InvalidArgumentError(`more than ${maxParts} parts in one upload`)),
    )
  })
  body.on('error', (err) => {
    fail(err)
    parser.destroy()
  })
  body.pipe(parser)
  await finished
  await chain
  if (failure !== undefined) {
    body.unpipe(parser)
    throw failure instanceof SandcellError
      ? failure
      : fromNodeError(failure, { op: 'upload', path: context.queryPath ?? '' })
  }
  return written
}
