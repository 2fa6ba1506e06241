/** `GET /files?path=`: streams a file to the client, opened with the requesting user's ids. */
import { closeSync, constants, createReadStream, fstatSync, openSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { posix } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { InvalidArgumentError } from '@sandcell/shared'
import { asUser, resolvePath, type FileOperationContext } from '../filesystem/file-operations.js'
import { chooseEncoding, contentDisposition, contentTypeFor } from './content-headers.js'

/** An inclusive byte range of a file. */
interface ByteRange {
  start: number
  end: number
}

/**
 * Sends the file at `path` (a final symlink is followed). Regular files only: a directory is 400
 * like envd, and FIFOs/devices are refused so a download cannot block the agent or never end.
 * Supports gzip (Accept-Encoding) and a single `Range`, like envd's http.ServeContent.
 */
export async function sendFile(
  req: IncomingMessage,
  res: ServerResponse,
  ops: FileOperationContext,
  path: string,
): Promise<void> {
  const encoding = chooseEncoding(req.headers['accept-encoding'])
  const { fd, size, mtime } = asUser(ops, 'open', path, () => {
    const resolved = resolvePath(ops, path)
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after.
    const opened = openSync(resolved.hostPath, constants.O_RDONLY | constants.O_NONBLOCK)
    try {
      const stats = fstatSync(opened)
      if (stats.isDirectory()) {
        throw new InvalidArgumentError(`path '${path}' is a directory`)
      }
      if (!stats.isFile()) {
        throw new InvalidArgumentError(`path '${path}' is not a regular file`)
      }
      return { fd: opened, size: stats.size, mtime: stats.mtime }
    } catch (err) {
      closeSync(opened)
      throw err
    }
  })
  const name = posix.basename(path)
  const headers: Record<string, string | number> = {
    'content-type': contentTypeFor(name),
    'content-disposition': contentDisposition(name),
    'last-modified': mtime.toUTCString(),
    'accept-ranges': 'bytes',
    vary: 'Accept-Encoding',
  }
  const range = req.headers.range === undefined ? undefined : parseRange(req.headers.range, size)
  if (range === 'unsatisfiable') {
    closeSync(fd)
    res.writeHead(416, { 'content-range': `bytes */${size}` })
    res.end()
    return
  }
  // Files that report size 0 (like /proc files) are streamed to EOF without a length.
  const knownSize = size > 0
  let status = 200
  let start = 0
  let end: number | undefined = knownSize ? size - 1 : undefined
  if (range !== undefined && knownSize) {
    status = 206
    start = range.start
    end = range.end
    headers['content-range'] = `bytes ${start}-${end}/${size}`
  }
  const gzip = encoding === 'gzip' && range === undefined
  if (gzip) {
    headers['content-encoding'] = 'gzip'
  } else if (end !== undefined) {
    headers['content-length'] = end - start + 1
  }
  res.writeHead(status, headers)
  const source = createReadStream('', { fd, start, end, autoClose: true })
  try {
    if (gzip) {
      await pipeline(source, createGzip(), res)
    } else {
      await pipeline(source, res)
    }
  } catch {
    // The client went away mid-download: nothing to answer. The fd is closed with the stream.
    source.destroy()
  }
}

/** Parses a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range; multiple ranges are ignored. */
function parseRange(header: string, size: number): ByteRange | 'unsatisfiable' | undefined {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (match === null || size === 0) {
    return undefined
  }
  const [, first = '', last = ''] = match
  if (first === '' && last === '') {
    return undefined
  }
  let start: number
  let end: number
  if (first === '') {
    const suffix = Number(last)
    if (suffix === 0) {
      return 'unsatisfiable'
    }
    start = Math.max(0, size - suffix)
    end = size - 1
  } else {
    start = Number(first)
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1)
  }
  if (start >= size || start > end) {
    return 'unsatisfiable'
  }
  return { start, end }
}
