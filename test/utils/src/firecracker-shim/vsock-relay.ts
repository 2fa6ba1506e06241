/**
 * The host side of Firecracker's vsock device (`docs/vsock.md`): a Unix socket at `uds_path`
 * where a host process connects, sends `CONNECT <port>\n` and, once the guest accepts, reads
 * `OK <host port>\n`; from then on the stream is the guest's socket. The shim's guest has no
 * vsock (this host has no vhost-vsock), so each accepted connection is relayed to the
 * virtio-serial port that stands for the guest port.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import type { VsockListener } from './api-controller.js'

/** Firecracker numbers host-initiated connections' local ports from 2^30 upwards. */
let nextHostPort = 1 << 30

/**
 * Listens on `path` (which must not exist: Firecracker's bind fails then too) and relays each
 * handshaken connection to `target(port)`; a port nobody serves gets the connection closed, as
 * Firecracker does when the guest resets it.
 */
export function bindVsock(
  path: string,
  target: (port: number) => string | undefined,
): Promise<VsockListener> {
  const server = createServer((host) => relay(host, target))
  return new Promise<Server>((resolve, reject) => {
    server.once('error', reject)
    server.listen(path, () => {
      server.off('error', reject)
      resolve(server)
    })
  }).then((listening) => ({ close: () => listening.close() }))
}

function relay(host: Socket, target: (port: number) => string | undefined): void {
  let head = Buffer.alloc(0)
  const onData = (chunk: Buffer): void => {
    head = Buffer.concat([head, chunk])
    const newline = head.indexOf('\n')
    if (newline < 0) {
      if (head.length > 64) {
        host.destroy()
      }
      return
    }
    host.off('data', onData)
    host.pause()
    const match = /^CONNECT (\d+)$/.exec(head.subarray(0, newline).toString('latin1'))
    const address = match?.[1] === undefined ? undefined : target(Number(match[1]))
    if (address === undefined) {
      host.destroy()
      return
    }
    const guest = createConnection(address)
    guest.once('connect', () => {
      host.write(`OK ${nextHostPort++}\n`)
      const rest = head.subarray(newline + 1)
      if (rest.length > 0) {
        guest.write(rest)
      }
      host.pipe(guest)
      guest.pipe(host)
      host.resume()
    })
    const close = (): void => {
      host.destroy()
      guest.destroy()
    }
    guest.on('error', close)
    guest.on('close', close)
    host.on('error', close)
    host.on('close', close)
  }
  host.on('data', onData)
  host.on('error', () => host.destroy())
}
