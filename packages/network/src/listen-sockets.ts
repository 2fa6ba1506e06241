/** Binding and closing the DNS forwarder's and egress proxy's sockets and servers as promises. */
import type { Socket as UdpSocket } from 'node:dgram'
import type { AddressInfo, Server } from 'node:net'
import { BugError } from '@sandcell/shared'

export function isAddressInUse(err: unknown): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
}

export function bindUdp(socket: UdpSocket, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind({ address: host, port }, () => {
      socket.off('error', reject)
      resolve()
    })
  })
}

/** Listens on `port` (0: any free one); resolves with the port listened on. */
export function listenTcp(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => {
      server.off('error', reject)
      const address: AddressInfo | string | null = server.address()
      if (address === null || typeof address === 'string') {
        reject(new BugError(`a TCP server reports address ${String(address)}`))
        return
      }
      resolve(address.port)
    })
  })
}

export function closeUdp(socket: UdpSocket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve())
    } catch {
      // Never bound, or closed already: nothing to wait for.
      resolve()
    }
  })
}

export function closeTcp(server: Server): Promise<void> {
  // The callback's error only says the server was not listening, which is the goal anyway.
  return new Promise((resolve) => server.close(() => resolve()))
}
