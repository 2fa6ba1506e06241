/** Translation of Node errno errors from file operations into sandcell errors (one table). */
import {
  AlreadyExistsError,
  FailedPreconditionError,
  FileNotFoundError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  PermissionDeniedError,
  ResourceExhaustedError,
  SandcellError,
} from '@sandcell/shared'

/** What the failed operation was doing, for the message. */
export interface FileErrorContext {
  /** Short verb phrase: "open", "create directory", "rename"… */
  op: string
  /** The sandbox path the operation was about (never a host path: clients see sandbox paths). */
  path: string
}

/**
 * The sandcell error for a failed file operation; SandcellErrors pass through unchanged.
 * Messages name the sandbox path and say what is wrong, e.g. "permission denied: open /root/x".
 */
export function fromNodeError(err: unknown, context: FileErrorContext): SandcellError {
  if (err instanceof SandcellError) {
    return err
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  const { op, path } = context
  const options = { cause: err, details: { path, errno: code } }
  switch (code) {
    case 'ENOENT':
      return new FileNotFoundError(path, options)
    case 'EACCES':
    case 'EPERM':
      return new PermissionDeniedError(`permission denied: ${op} ${path}`, options)
    case 'EROFS':
      return new PermissionDeniedError(`read-only file system: ${op} ${path}`, options)
    case 'EEXIST':
      return new AlreadyExistsError(`${path} already exists`, options)
    case 'ENOTEMPTY':
      return new FailedPreconditionError(`${path} is a directory that is not empty`, options)
    case 'ENOSPC':
    case 'EDQUOT':
      return new NotEnoughSpaceError(`not enough disk space: ${op} ${path}`, options)
    case 'ENOTDIR':
      return new InvalidArgumentError(`a component of ${path} is not a directory`, options)
    case 'EISDIR':
      return new InvalidArgumentError(`${path} is a directory`, options)
    case 'ELOOP':
      return new InvalidArgumentError(`too many levels of symbolic links in ${path}`, options)
    case 'ENAMETOOLONG':
      return new InvalidArgumentError(`path is too long: ${path}`, options)
    case 'EINVAL':
      return new InvalidArgumentError(`invalid argument: ${op} ${path}`, options)
    case 'EXDEV':
      return new FailedPreconditionError(`cannot ${op} ${path} across file systems`, options)
    case 'EBUSY':
    case 'ETXTBSY':
      return new FailedPreconditionError(`${path} is busy`, options)
    case 'EMFILE':
    case 'ENFILE':
      return new ResourceExhaustedError(`too many open files: ${op} ${path}`, options)
    case undefined:
    default:
      return new SandcellError(
        `${op} ${path} failed: ${(err as Error | undefined)?.message ?? String(err)}`,
        options,
      )
  }
}
