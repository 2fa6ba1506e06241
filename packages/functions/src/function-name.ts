/**
 * Function names, as OpenLambda takes them (`^[A-Za-z0-9._-]+$`) and a little stricter: ASCII
 * only, at most 128 characters, not starting with a dot (so never `.` or `..`), because a name
 * becomes a URL segment, a file name and a label.
 */
import { InvalidArgumentError } from '@sandcell/shared'

const namePattern = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/

/** @throws InvalidArgumentError saying what a valid name is */
export function assertFunctionName(name: string): void {
  if (!namePattern.test(name)) {
    throw new InvalidArgumentError(
      `function name ${JSON.stringify(name.slice(0, 140))} is not valid: 1 to 128 of A-Z, a-z, 0-9, ".", "_" and "-", not starting with "."`,
    )
  }
}
