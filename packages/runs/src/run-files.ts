/**
 * The files of a run as clients send them (Piston's `files`, Lambdo's `code`): safe relative
 * names only, decoded from utf8/base64/hex, within the configured count and size. Every problem
 * is an InvalidArgumentError whose message names the field as the client spelled it.
 */
import { InvalidArgumentError } from '@sandcell/shared'

/** A file as a client sends it, before validation. */
export interface WireFile {
  name?: string | undefined
  content: string
  /** Piston's: `utf8` (default), `base64` or `hex`; anything else is utf8, as Piston does. */
  encoding?: string | undefined
}

/** A validated file, ready to write into the run's directory. */
export interface RunFile {
  /** Relative path inside the run's directory. */
  name: string
  content: Buffer
  /** Sent as text (utf8): a source file the compile step and `{{files}}` see. */
  source: boolean
}

export interface RunFileLimits {
  /** Most files one run may have. */
  maxFiles: number
  /** Most bytes all files of one run may hold together, decoded. */
  maxTotalBytes: number
}

export interface ValidateFilesOptions extends RunFileLimits {
  /** Name of the first file when the client gives none: the language's main file. */
  mainName: string
  /** How the client names the list and a name field: `files` / `name`, `code` / `filename`. */
  field: { list: string; name: string }
}

const maxNameLength = 1024
const maxSegmentLength = 255

/**
 * Why `name` cannot be a file of a run, or undefined when it can: it must be a relative path
 * inside the run's directory, without `.`/`..` segments, empty segments or control characters.
 */
export function fileNameProblem(name: string): string | undefined {
  if (name === '') {
    return 'is empty'
  }
  if (name.length > maxNameLength) {
    return `is longer than ${maxNameLength} characters`
  }
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    return 'contains a control character'
  }
  if (name.startsWith('/')) {
    return 'is an absolute path; give a path relative to the run directory'
  }
  if (name.includes('\\')) {
    return 'contains a backslash'
  }
  const segments = name.split('/')
  if (segments.some((segment) => segment === '..')) {
    return 'leaves the run directory (..)'
  }
  if (segments.some((segment) => segment === '' || segment === '.')) {
    return 'has an empty or "." path segment'
  }
  if (segments.some((segment) => segment.length > maxSegmentLength)) {
    return `has a path segment longer than ${maxSegmentLength} characters`
  }
  return undefined
}

const base64Pattern = /^[A-Za-z0-9+/_-]*={0,2}$/
const hexPattern = /^(?:[0-9a-fA-F]{2})*$/

/** Decodes a file's content, refusing base64/hex that is not (Node would silently skip junk). */
export function decodeContent(content: string, encoding: string | undefined): Buffer | undefined {
  switch (encoding) {
    case 'base64': {
      const compact = content.replace(/\s+/g, '')
      return base64Pattern.test(compact) && compact.length % 4 !== 1
        ? Buffer.from(
            compact,
            compact.includes('-') || compact.includes('_') ? 'base64url' : 'base64',
          )
        : undefined
    }
    case 'hex':
      return hexPattern.test(content) ? Buffer.from(content, 'hex') : undefined
    case undefined:
    default:
      return Buffer.from(content, 'utf8')
  }
}

/** Whether a wire encoding means text (Piston treats unknown encodings as utf8). */
export function isTextEncoding(encoding: string | undefined): boolean {
  return encoding !== 'base64' && encoding !== 'hex'
}

/**
 * Validates and decodes a run's files; the first is the main file. Unnamed files are called
 * after the language's main file (the first) or `fileN.code` (Piston's naming).
 * @throws InvalidArgumentError naming the first bad field
 */
export function validateFiles(
  files: readonly WireFile[],
  options: ValidateFilesOptions,
): RunFile[] {
  const { list, name: nameField } = options.field
  if (files.length === 0) {
    throw new InvalidArgumentError(`${list} must hold at least one file`)
  }
  if (files.length > options.maxFiles) {
    throw new InvalidArgumentError(
      `${list} cannot exceed the configured limit of ${options.maxFiles} files`,
    )
  }
  const seen = new Map<string, number>()
  let totalBytes = 0
  const decoded = files.map((file, index): RunFile => {
    const name = file.name ?? (index === 0 ? options.mainName : `file${index}.code`)
    const problem = fileNameProblem(name)
    if (problem !== undefined) {
      throw new InvalidArgumentError(
        `${list}[${index}].${nameField} ${JSON.stringify(name)} ${problem}`,
        { details: { index, name } },
      )
    }
    const earlier = seen.get(name)
    if (earlier !== undefined) {
      throw new InvalidArgumentError(
        `${list}[${index}].${nameField} ${JSON.stringify(name)} repeats ${list}[${earlier}].${nameField}`,
      )
    }
    seen.set(name, index)
    const content = decodeContent(file.content, file.encoding)
    if (content === undefined) {
      throw new InvalidArgumentError(
        `${list}[${index}].content is not valid ${file.encoding ?? 'utf8'}`,
      )
    }
    totalBytes += content.byteLength
    if (totalBytes > options.maxTotalBytes) {
      throw new InvalidArgumentError(
        `${list} cannot exceed the configured limit of ${options.maxTotalBytes} bytes in total`,
      )
    }
    return { name, content, source: isTextEncoding(file.encoding) }
  })
  // A directory and a file of the same name cannot both be written.
  for (const file of decoded) {
    const parents = file.name.split('/').slice(0, -1)
    for (let depth = 1; depth <= parents.length; depth++) {
      const parent = parents.slice(0, depth).join('/')
      const clash = seen.get(parent)
      if (clash !== undefined) {
        throw new InvalidArgumentError(
          `${list}[${clash}].${nameField} ${JSON.stringify(parent)} is also the directory of ${JSON.stringify(file.name)}`,
        )
      }
    }
  }
  return decoded
}
