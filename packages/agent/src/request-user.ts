/** Which sandbox user a request acts as: the one its `Authorization` names, or a default. */
import { defaultUser } from '@sandcell/protocol'
import type { AgentContext } from './agent-context.js'
import type { SandboxUser } from './process/users.js'

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
