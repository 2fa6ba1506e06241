/**
 * `POST /archive` (a sandcell extension of envd): extracts a tar body, gzip-compressed or not,
 * below a directory with one owner, streamed entry by entry. Template builds' COPY steps use it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { InvalidArgumentError, SandcellError } from '@sandcell/shared'
import type * as TarStream from 'tar-stream'
import type { AgentContext } from '../agent-context.js'
import { fromNodeError } from '../filesystem/node-errors.js'
import { requirePath } from '../filesystem/user-paths.js'
import { resolveRequestUser } from '../request-user.js'
import { parseEntry, parseModeQuery } from './archive-entry.js'
import { createArchiveWriter, type ArchiveResult, type ArchiveWriter } from './archive-writer.js'
import { sendJson } from './http-response.js'

/** gzip's magic bytes: a body starting with them is gunzipped first. */
const gzipMagic = Buffer.from([0x1f, 0x8b])

let tarStreamModule: Promise<typeof TarStream> | undefined

/** tar-stream is only needed for archives: loaded on first use. */
async function loadTarStream(): Promise<typeof TarStream> {
  tarStreamModule ??= import('tar-stream')
  return tarStreamModule
}

/**
 * Serves `POST /archive?path=<dir>[&username=<user>][&mode=<octal>]` and answers
 * `{ entries, bytes }`. The server's access-token gate has authorized the request (signed URLs
 * are not accepted: they grant one file as one user, and an archive writes as root).
 * @throws SandcellError for the caller to send in envd's error shape: 400 for a bad query, body
 *   or entry (entries before it stay written, like /files), 403, 507 when the disk is full…
 */
export async function handleArchive(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  context: AgentContext,
): Promise<void> {
  const query = url.searchParams
  const username = query.get('username')
  const user = resolveRequestUser(
    context,
    username === null || username === '' ? undefined : username,
  )
  const destination = requirePath(
    'path',
    query.get('path') ?? '',
    user,
    context.state.defaultWorkdir,
  )
  const mode = parseModeQuery(query.get('mode'))
  const head = await peek(req, gzipMagic.length)
  if (head.ended) {
    throw new InvalidArgumentError(
      head.bytes.length === 0
        ? 'the body is empty; expected a tar archive (gzip-compressed or not)'
        : 'the body is not a valid tar archive: it is too short',
    )
  }
  const writer = createArchiveWriter({
    root: context.root,
    destination,
    owner: { uid: user.uid, gid: user.gid },
    mode,
  })
  const result = await extract(req, head.bytes.equals(gzipMagic), writer, destination)
  sendJson(res, 200, result)
}

/**
 * Feeds the body through the tar parser into the writer, one entry at a time: the parser holds
 * the next entry back until the writer is done, and the body back while the parser is full.
 */
async function extract(
  req: IncomingMessage,
  gzip: boolean,
  writer: ArchiveWriter,
  destination: string,
): Promise<ArchiveResult> {
  const parser = (await loadTarStream()).extract()
  let requestError: Error | undefined
  req.once('error', (err) => {
    requestError = err
    parser.destroy(err)
  })
  let source: Readable = req
  if (gzip) {
    const gunzip = createGunzip()
    gunzip.once('error', (err) =>
      parser.destroy(
        new InvalidArgumentError(`the body is not valid gzip: ${err.message}`, { cause: err }),
      ),
    )
    source = req.pipe(gunzip)
  }
  /** The error for a failure of the body: a client gone, bad gzip, or a broken tar. */
  const bodyFailure = (err: unknown): SandcellError => {
    if (err instanceof SandcellError) {
      return err
    }
    if (err === requestError) {
      return fromNodeError(err, { op: 'receive an archive for', path: destination })
    }
    return new InvalidArgumentError(
      `the body is not a valid tar archive: ${(err as Error).message}`,
      { cause: err },
    )
  }
  source.pipe(parser)
  try {
    for await (const entry of parser) {
      const parsed = parseEntry(entry.header)
      // An entry's stream yields the Buffers of the body; tar-stream's types leave them unknown.
      await writer.write(parsed, content(entry as AsyncIterable<Uint8Array>, bodyFailure))
      if (parsed.kind !== 'file') {
        await discard(entry)
      }
    }
  } catch (err) {
    // Stop reading without destroying the request: the client still sending should get our
    // answer (a 507), not a reset connection.
    req.unpipe()
    if (source !== req) {
      source.destroy()
    }
    parser.destroy()
    throw bodyFailure(err)
  }
  return writer.finish()
}

/**
 * An entry's data with the body's failures (a tar cut short…) told apart from the writer's own
 * (a full disk): the writer passes sandcell errors through as they are.
 */
async function* content(
  data: AsyncIterable<Uint8Array>,
  failure: (err: unknown) => SandcellError,
): AsyncIterable<Uint8Array> {
  try {
    for await (const chunk of data) {
      yield chunk
    }
  } catch (err) {
    throw failure(err)
  }
}

/** Reads and drops an entry's data (only regular files' data is written). */
async function discard(data: AsyncIterable<unknown>): Promise<void> {
  const chunks = data[Symbol.asyncIterator]()
  while ((await chunks.next()).done !== true) {
    // Dropped: a link or directory entry carries no content.
  }
}

/**
 * Reads the first `count` bytes of the body and puts them back for the next reader; `ended` when
 * the body ended before that (then it is `bytes`, and nothing was put back).
 */
function peek(body: Readable, count: number): Promise<{ bytes: Buffer; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let length = 0
    const finish = (ended: boolean): void => {
      body.off('readable', onReadable)
      body.off('end', onEnd)
      body.off('error', reject)
      const bytes = Buffer.concat(chunks)
      if (!ended) {
        body.unshift(bytes)
      }
      resolve({ bytes: bytes.subarray(0, count), ended })
    }
    const onReadable = (): void => {
      let chunk: Buffer | null
      while (length < count && (chunk = body.read() as Buffer | null) !== null) {
        chunks.push(chunk)
        length += chunk.length
      }
      if (length >= count) {
        finish(false)
      }
    }
    const onEnd = (): void => finish(true)
    body.on('readable', onReadable)
    body.once('end', onEnd)
    body.once('error', reject)
  })
}
