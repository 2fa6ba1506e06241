/** The dependencies every service and route of the agent receives. */
import type { Logger } from '@sandcell/shared'
import type { AgentState } from './agent-state.js'
import type { AgentConfig } from './config.js'
import type { UserDirectory } from './process/users.js'

/** Built once by createAgentServer and passed down; nothing reads globals. */
export interface AgentContext {
  config: AgentConfig
  log: Logger
  state: AgentState
  users: UserDirectory
  /** The root all sandbox paths resolve inside: absolute, symlink-free, no trailing slash. */
  root: string
}
