/** Fixtures for the services' unit tests: a stored record and the runtime handle's bare bones. */
import type { Sandbox } from '@sandcell/runtime'
import { newSandboxId } from '@sandcell/shared'
import type { SandboxRecord } from '../store/sqlite-store.js'

/** The parts of a runtime sandbox the live table reads; calling anything else fails the test. */
export function fakeSandbox(id: string, portAddress?: string): Sandbox {
  return {
    id,
    info: {
      agentSocket: `/run/${id}.sock`,
      ...(portAddress === undefined ? {} : { network: { address: portAddress } }),
    },
  } as unknown as Sandbox
}

/** A running sandbox's record with a fresh id, started at 1 s, ending at 61 s (Unix ms). */
export function sandboxRecord(overrides: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id: newSandboxId(),
    templateId: 'base',
    driver: 'container',
    state: 'running',
    clientId: 'sandcell',
    metadata: {},
    envVars: {},
    envdAccessToken: 'envd-token',
    limits: { memoryMiB: 512, cpus: 1, pids: 256, diskMiB: 1024 },
    startedAt: 1000,
    endAt: 61_000,
    onTimeout: 'kill',
    autoPauseMemory: true,
    autoResume: false,
    filesystemPause: null,
    allowInternetAccess: null,
    network: null,
    trafficAccessToken: null,
    ...overrides,
  }
}
