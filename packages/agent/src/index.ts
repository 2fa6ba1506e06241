/** Public surface of @sandcell/agent for the runtime and tests: the server and its config. */
export { createAgentServer } from './server.js'
export type { AgentServer, AgentServerOptions, BoundListener } from './server.js'
export { parseAgentArgv, parseAgentConfig } from './config.js'
export type { AgentConfig, AgentConfigInput, ListenSpec } from './config.js'
