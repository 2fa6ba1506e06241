/** Which sandbox user a request acts as: `Authorization: Basic base64("<user>:")` or a default. */
import { defaultUser } from '@sandcell/protocol'
import { InvalidArgumentError } from '@sandcell/shared'
import type { AgentContext } from './agent-context.js'
import type { SandboxUser } from './process/users.js'

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

/**
 * The user a request runs as: the named one, else the default set by /init, else `user`.
 * @throws InvalidArgumentError naming the user when the sandbox has no such user.
 */
export function resolveRequestUser(
  context: Pick<AgentContext, 'users' | 'state'>,
  name: string | undefined,
): SandboxUser {
  return context.users.lookup(name ?? context.state.defaultUser ?? defaultUser)
}
