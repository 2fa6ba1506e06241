/**
 * What every driver's probe checks of the host the same way: that the agent it starts is built,
 * and that a sandbox's agent socket fits in a Unix socket address.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

/** Longest path a Unix socket address can hold (sun_path, with its NUL). */
export const maxSocketPathLength = 107

/** The agent's bundle/ directory in @sandcell/agent, where `npm run build` puts it. */
export function defaultAgentDir(): string {
  const require = createRequire(import.meta.url)
  return join(dirname(require.resolve('@sandcell/agent/package.json')), 'bundle')
}

/** What is wrong when `agentDir` holds no built agent, else undefined. */
export function agentBundleProblem(agentDir: string): string | undefined {
  return existsSync(join(agentDir, 'agent.mjs'))
    ? undefined
    : `the agent is not built (${agentDir}/agent.mjs): run npm run build`
}

/** What is wrong when `socketPath` (a sandbox's agent socket) is too long, else undefined. */
export function socketPathProblem(socketPath: string): string | undefined {
  return socketPath.length > maxSocketPathLength
    ? `the data dir path is too long for Unix sockets (${socketPath.length} > ${maxSocketPathLength})`
    : undefined
}
