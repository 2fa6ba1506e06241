/** How envd learns the Linux user a request acts as: `Authorization: Basic base64("<user>:")`. */
import { InvalidArgumentError } from '@sandcell/shared'

/** The `Authorization` value naming `user`, as the e2b SDK sends it (no password). */
export function basicAuthorization(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`
}

/**
 * The user name in a Basic `Authorization` header (the password part is ignored, the SDK sends
 * none); undefined when there is no header or no name.
 * @throws InvalidArgumentError when the header is not valid Basic credentials.
 */
export function usernameFromAuthorization(header: string | null | undefined): string | undefined {
  if (header === null || header === undefined || header === '') {
    return undefined
  }
  const match = /^Basic\s+([A-Za-z0-9+/=_-]*)\s*$/i.exec(header)
  if (match === null) {
    throw new InvalidArgumentError('Authorization must be "Basic base64(<user>:)"')
  }
  const decoded = Buffer.from(match[1] as string, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  const name = colon === -1 ? decoded : decoded.slice(0, colon)
  return name === '' ? undefined : name
}
