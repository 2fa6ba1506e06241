/** The proxy's view of the live sandboxes (its registry), and its way to resume a paused one. */
import type { ProxyRegistry, ProxyTarget } from '../envd-proxy/proxy-target.js'
import type { LiveSandboxes } from './live-sandboxes.js'

/**
 * The registry the envd proxy asks on every request, answered from the live table. `resume`
 * gives an autoResumed sandbox the lifetime it was created with (at least a second).
 */
export function createProxyRegistry(
  live: LiveSandboxes,
  connect: (id: string, timeoutS: number) => Promise<unknown>,
): ProxyRegistry {
  return {
    get: (id) => live.get(id)?.target,
    list: () => targets(live),
    resume: async (id) => {
      const { record } = live.require(id)
      if (record.state === 'paused') {
        await connect(id, Math.ceil(Math.max(1000, record.endAt - record.startedAt) / 1000))
      }
    },
  }
}

function* targets(live: LiveSandboxes): Iterable<ProxyTarget> {
  for (const entry of live.values()) {
    yield entry.target
  }
}
