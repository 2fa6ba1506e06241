/** Connect clients for the envd services of one sandbox's agent, over its Unix socket. */
import { Agent } from 'node:http'
import { createClient, type Client } from '@connectrpc/connect'
import { createConnectTransport } from '@connectrpc/connect-node'
import { Filesystem, Process } from '@sandcell/protocol'

export interface AgentConnection {
  readonly process: Client<typeof Process>
  readonly filesystem: Client<typeof Filesystem>
  /** Host path of the agent's socket, for raw HTTP (file transfer, proxies). */
  readonly socketPath: string
  /** Closes idle keep-alive connections. */
  close(): void
}

/** Basic auth header selecting the Linux user an RPC acts as, as the e2b SDK sends it. */
export function userHeader(user: string): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${user}:`).toString('base64')}` }
}

export function createAgentConnection(socketPath: string): AgentConnection {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 })
  const transport = createConnectTransport({
    httpVersion: '1.1',
    // The host name is unused on a Unix socket but must be a valid URL.
    baseUrl: 'http://sandbox',
    useBinaryFormat: true,
    nodeOptions: { socketPath, agent },
  })
  return {
    process: createClient(Process, transport),
    filesystem: createClient(Filesystem, transport),
    socketPath,
    close: () => agent.destroy(),
  }
}
