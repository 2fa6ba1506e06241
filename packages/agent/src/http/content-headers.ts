/** Content-Type by extension, Content-Disposition and Accept-Encoding choice for downloads. */
import { posix } from 'node:path'
import { InvalidArgumentError } from '@sandcell/shared'

/** Common types (Go's mime.TypeByExtension table plus a few the sandbox often serves). */
const typesByExtension: Record<string, string> = {
  '.avif': 'image/avif',
  '.css': 'text/css; charset=utf-8',
  '.csv': 'text/csv; charset=utf-8',
  '.gif': 'image/gif',
  '.gz': 'application/gzip',
  '.htm': 'text/html; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.ico': 'image/vnd.microsoft.icon',
  '.jpeg': 'image/jpeg',
  '.jpg': 'image/jpeg',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.md': 'text/markdown; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.mp3': 'audio/mpeg',
  '.mp4': 'video/mp4',
  '.pdf': 'application/pdf',
  '.png': 'image/png',
  '.py': 'text/x-python; charset=utf-8',
  '.sh': 'text/x-shellscript; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.tar': 'application/x-tar',
  '.ts': 'text/plain; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.wasm': 'application/wasm',
  '.webp': 'image/webp',
  '.xml': 'text/xml; charset=utf-8',
  '.yaml': 'application/yaml',
  '.yml': 'application/yaml',
  '.zip': 'application/zip',
}

/** The Content-Type for a file name; `application/octet-stream` when the extension is unknown. */
export function contentTypeFor(name: string): string {
  return typesByExtension[posix.extname(name).toLowerCase()] ?? 'application/octet-stream'
}

/**
 * `attachment; filename="<ascii fallback>"; filename*=UTF-8''<encoded>` (RFC 6266), so browsers
 * following a download URL save the file under its own name.
 */
export function contentDisposition(name: string): string {
  const fallback = name.replace(/[^\x20-\x7e]|["\\]/g, '_')
  const encoded = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  )
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`
}

/**
 * envd's Accept-Encoding choice: "gzip" when the client ranks it acceptable (above identity, or
 * identity is refused), "" for identity.
 * @throws InvalidArgumentError when every encoding we have is refused (envd answers 406 there).
 */
export function chooseEncoding(header: string | undefined): 'gzip' | '' {
  if (header === undefined || header.trim() === '') {
    return ''
  }
  const offers = header.split(',').map((part) => {
    const [name = '', ...params] = part.trim().split(';')
    let quality = 1
    for (const param of params) {
      const match = /^\s*q=([0-9.]+)\s*$/i.exec(param)
      if (match !== null) {
        quality = Number(match[1])
      }
    }
    return { name: name.trim().toLowerCase(), quality }
  })
  offers.sort((a, b) => b.quality - a.quality)
  const identityRefused = offers.some((offer) => offer.name === 'identity' && offer.quality === 0)
  for (const offer of offers) {
    if (offer.quality === 0) {
      continue
    }
    if (offer.name === 'identity') {
      return ''
    }
    if (offer.name === '*') {
      return identityRefused ? 'gzip' : ''
    }
    if (offer.name === 'gzip') {
      return 'gzip'
    }
  }
  if (!identityRefused) {
    return ''
  }
  throw new InvalidArgumentError('no acceptable encoding found, supported: [identity, gzip]')
}
