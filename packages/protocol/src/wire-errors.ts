/** Translation between sandcell's error hierarchy and Connect errors, in both directions. */
import { Code, ConnectError } from '@connectrpc/connect'
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  SandcellError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
  assertNever,
  type RpcCode,
} from '@sandcell/shared'

const toConnectCode: Record<RpcCode, Code> = {
  canceled: Code.Canceled,
  unknown: Code.Unknown,
  invalid_argument: Code.InvalidArgument,
  deadline_exceeded: Code.DeadlineExceeded,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  permission_denied: Code.PermissionDenied,
  resource_exhausted: Code.ResourceExhausted,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  out_of_range: Code.OutOfRange,
  unimplemented: Code.Unimplemented,
  internal: Code.Internal,
  unavailable: Code.Unavailable,
  data_loss: Code.DataLoss,
  unauthenticated: Code.Unauthenticated,
}

/** Header that carries the sandcell error code across the wire, so clients get the exact class. */
export const errorCodeMetadataKey = 'x-sandcell-error-code'

/** A SandcellError as a ConnectError; anything else becomes `internal` with its message. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) {
    return err
  }
  if (err instanceof SandcellError) {
    const connectError = new ConnectError(
      err.message,
      toConnectCode[err.rpcCode],
      undefined,
      undefined,
      err,
    )
    connectError.metadata.set(errorCodeMetadataKey, err.code)
    return connectError
  }
  return ConnectError.from(err, Code.Internal)
}

/** A ConnectError from the agent as the SandcellError a caller can catch by class. */
export function fromConnectError(err: unknown): unknown {
  if (!(err instanceof ConnectError)) {
    return err
  }
  const message = err.rawMessage
  const options = { cause: err }
  const code = err.code
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return new InvalidArgumentError(message, options)
    case Code.NotFound:
      return new NotFoundError(message, options)
    case Code.AlreadyExists:
      return new AlreadyExistsError(message, options)
    case Code.PermissionDenied:
      return new PermissionDeniedError(message, options)
    case Code.Unauthenticated:
      return new UnauthenticatedError(message, options)
    case Code.ResourceExhausted:
      return err.metadata.get(errorCodeMetadataKey) === 'NOT_ENOUGH_SPACE'
        ? new NotEnoughSpaceError(message, options)
        : new ResourceExhaustedError(message, options)
    case Code.FailedPrecondition:
    case Code.Aborted:
      return new FailedPreconditionError(message, options)
    case Code.DeadlineExceeded:
      return new TimeoutError(message, options)
    case Code.Unavailable:
    case Code.Canceled:
      return new UnavailableError(message, options)
    case Code.Unknown:
    case Code.Unimplemented:
    case Code.Internal:
    case Code.DataLoss:
      return new SandcellError(message, options)
    default:
      return assertNever(code, 'connect code')
  }
}
