/** The one error hierarchy of sandcell: every failure a caller can act on is a SandcellError. */

/** Connect RPC codes by name; mirrors `@connectrpc/connect`'s Code so shared stays dependency-free. */
export type RpcCode =
  | 'canceled'
  | 'unknown'
  | 'invalid_argument'
  | 'deadline_exceeded'
  | 'not_found'
  | 'already_exists'
  | 'permission_denied'
  | 'resource_exhausted'
  | 'failed_precondition'
  | 'aborted'
  | 'out_of_range'
  | 'unimplemented'
  | 'internal'
  | 'unavailable'
  | 'data_loss'
  | 'unauthenticated'

export interface SandcellErrorOptions {
  cause?: unknown
  /** Safe, non-secret facts for clients and logs. */
  details?: Record<string, unknown>
}

/** Root of every error sandcell raises on purpose. `message` says what to change. */
export class SandcellError extends Error {
  /** Stable machine-readable code, UPPER_SNAKE. */
  readonly code: string = 'INTERNAL'
  /** HTTP status an API answers with. */
  readonly status: number = 500
  readonly rpcCode: RpcCode = 'internal'
  readonly details: Record<string, unknown> | undefined

  constructor(message: string, options: SandcellErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.details = options.details
  }
}

export class InvalidArgumentError extends SandcellError {
  override readonly code: string = 'INVALID_ARGUMENT'
  override readonly status: number = 400
  override readonly rpcCode: RpcCode = 'invalid_argument'
}

/** Configuration that cannot be used; lists every bad path at once. */
export class ConfigError extends InvalidArgumentError {
  override readonly code: string = 'CONFIG_INVALID'
}

export class UnauthenticatedError extends SandcellError {
  override readonly code: string = 'UNAUTHENTICATED'
  override readonly status: number = 401
  override readonly rpcCode: RpcCode = 'unauthenticated'
}

export class PermissionDeniedError extends SandcellError {
  override readonly code: string = 'PERMISSION_DENIED'
  override readonly status: number = 403
  override readonly rpcCode: RpcCode = 'permission_denied'
}

/** A path that would resolve outside the root it is confined to. */
export class PathEscapeError extends PermissionDeniedError {
  override readonly code: string = 'PATH_ESCAPE'
  constructor(path: string, options: SandcellErrorOptions = {}) {
    super(`path ${JSON.stringify(path)} leaves the sandbox root`, {
      ...options,
      details: { path, ...options.details },
    })
  }
}

export class NotFoundError extends SandcellError {
  override readonly code: string = 'NOT_FOUND'
  override readonly status: number = 404
  override readonly rpcCode: RpcCode = 'not_found'
}

export class SandboxNotFoundError extends NotFoundError {
  override readonly code: string = 'SANDBOX_NOT_FOUND'
  constructor(sandboxId: string, options: SandcellErrorOptions = {}) {
    super(`sandbox ${sandboxId} does not exist or was killed`, {
      ...options,
      details: { sandboxId, ...options.details },
    })
  }
}

export class TemplateNotFoundError extends NotFoundError {
  override readonly code: string = 'TEMPLATE_NOT_FOUND'
  constructor(template: string, known: readonly string[], options: SandcellErrorOptions = {}) {
    super(`template ${JSON.stringify(template)} does not exist; known: ${known.join(', ')}`, {
      ...options,
      details: { template, known, ...options.details },
    })
  }
}

export class FileNotFoundError extends NotFoundError {
  override readonly code: string = 'FILE_NOT_FOUND'
  constructor(path: string, options: SandcellErrorOptions = {}) {
    super(`${path} does not exist`, { ...options, details: { path, ...options.details } })
  }
}

export class ProcessNotFoundError extends NotFoundError {
  override readonly code: string = 'PROCESS_NOT_FOUND'
}

/**
 * A container image sandcell will not use: a blob that does not match its digest, a layer entry
 * that would leave its root, a format it does not read. Pulling it again gives the same answer.
 */
export class ImageRejectedError extends InvalidArgumentError {
  override readonly code: string = 'IMAGE_REJECTED'
}

export class AlreadyExistsError extends SandcellError {
  override readonly code: string = 'ALREADY_EXISTS'
  override readonly status: number = 409
  override readonly rpcCode: RpcCode = 'already_exists'
}

export class FailedPreconditionError extends SandcellError {
  override readonly code: string = 'FAILED_PRECONDITION'
  override readonly status: number = 409
  override readonly rpcCode: RpcCode = 'failed_precondition'
}

/** A call on a sandbox that a failure or destroy already ended; `cause` is what ended it. */
export class SandboxDeadError extends FailedPreconditionError {
  override readonly code: string = 'SANDBOX_DEAD'
  constructor(sandboxId: string, reason: string, options: SandcellErrorOptions = {}) {
    super(`sandbox ${sandboxId} is destroyed (${reason})`, {
      ...options,
      details: { sandboxId, reason, ...options.details },
    })
  }
}

export class ResourceExhaustedError extends SandcellError {
  override readonly code: string = 'RESOURCE_EXHAUSTED'
  override readonly status: number = 429
  override readonly rpcCode: RpcCode = 'resource_exhausted'
}

/** The sandbox's disk is full; 507 is what the e2b SDK maps to NotEnoughSpaceError. */
export class NotEnoughSpaceError extends ResourceExhaustedError {
  override readonly code: string = 'NOT_ENOUGH_SPACE'
  override readonly status: number = 507
}

export class TimeoutError extends SandcellError {
  override readonly code: string = 'TIMEOUT'
  override readonly status: number = 504
  override readonly rpcCode: RpcCode = 'deadline_exceeded'
}

export class UnavailableError extends SandcellError {
  override readonly code: string = 'UNAVAILABLE'
  override readonly status: number = 503
  override readonly rpcCode: RpcCode = 'unavailable'
}

/** An isolation driver failed to do what the host asked (spawn, mount, cgroup, QMP…). */
export class DriverError extends SandcellError {
  override readonly code: string = 'DRIVER_FAILED'
  override readonly status: number = 500
  override readonly rpcCode: RpcCode = 'internal'
}

/**
 * A template build stopped at one of its steps (`base`, `1`…`n`, `finalize`): a failing
 * command, a missing file, an image that cannot be pulled. The message says what to change.
 */
export class BuildFailedError extends SandcellError {
  override readonly code: string = 'BUILD_FAILED'
  override readonly status: number = 400
  override readonly rpcCode: RpcCode = 'failed_precondition'
  /** The build step it failed at, as E2B names them. */
  readonly step: string

  constructor(step: string, message: string, options: SandcellErrorOptions = {}) {
    super(message, options)
    this.step = step
  }
}

/** A broken invariant inside sandcell itself: never the caller's fault. */
export class BugError extends SandcellError {
  override readonly code: string = 'BUG'
}

/** Every concrete error class, for the docs check and the wire tables. */
export const errorClasses = [
  SandcellError,
  InvalidArgumentError,
  ConfigError,
  UnauthenticatedError,
  PermissionDeniedError,
  PathEscapeError,
  NotFoundError,
  SandboxNotFoundError,
  TemplateNotFoundError,
  FileNotFoundError,
  ProcessNotFoundError,
  ImageRejectedError,
  AlreadyExistsError,
  FailedPreconditionError,
  SandboxDeadError,
  ResourceExhaustedError,
  NotEnoughSpaceError,
  TimeoutError,
  UnavailableError,
  DriverError,
  BuildFailedError,
  BugError,
] as const

export function isSandcellError(value: unknown): value is SandcellError {
  return value instanceof SandcellError
}

/** Marks a switch as exhaustive: reaching it means a case was added without handling. */
export function assertNever(value: never, what = 'value'): never {
  throw new BugError(`unhandled ${what}: ${JSON.stringify(value)}`)
}

/** Message of anything thrown, for logs and one-line reasons. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
