/**
 * One DNS query to one upstream resolver, over UDP or TCP, settled once: by the reply, an
 * error, the deadline or the caller's abort, with the socket closed in every case.
 */
import { createSocket, type RemoteInfo } from 'node:dgram'
import { createConnection } from 'node:net'
import { TimeoutError, UnavailableError } from '@sandcell/shared'
import { frame, isReplyTo, takeFrame } from './dns-message.js'
import type { Upstream } from './parse-upstream.js'

/** Rejections from the attempt helpers must be Errors; an abort's reason may be anything. */
function abandoned(signal: AbortSignal): UnavailableError {
  return new UnavailableError('the DNS query was abandoned', { cause: signal.reason })
}

type Settle = (error: Error | undefined, reply?: Buffer) => void

/**
 * One attempt at one upstream: `start` opens a socket, sends the query and settles with the
 * reply or an error; this frame settles it once, on the deadline or the caller's abort too,
 * and closes what `start` opened.
 */
function attempt(
  upstream: Upstream,
  timeoutMs: number,
  signal: AbortSignal,
  start: (settle: Settle) => () => void,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let settled = false
    // Set once `start` returns; a settle during `start` closes right after.
    const opened: { close?: () => void } = {}
    const settle: Settle = (error, reply) => {
      if (settled) {
        return
      }
      settled = true
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      opened.close?.()
      if (reply === undefined) {
        reject(error ?? new UnavailableError(`${upstream.label} gave no reply`))
      } else {
        resolve(reply)
      }
    }
    const onAbort = (): void => settle(abandoned(signal))
    const timer = setTimeout(() => {
      settle(new TimeoutError(`${upstream.label} did not answer within ${timeoutMs} ms`))
    }, timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    opened.close = start(settle)
    if (settled) {
      opened.close()
    }
  })
}

/** One query to one upstream over UDP, from a fresh socket connected to it. */
export function askUdp(
  upstream: Upstream,
  query: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Buffer> {
  return attempt(upstream, timeoutMs, signal, (settle) => {
    const socket = createSocket('udp4')
    // A connected socket also makes the kernel report ICMP port-unreachable as ECONNREFUSED,
    // so a resolver that is down fails over at once instead of after the timeout.
    socket.on('error', (err) => settle(err))
    socket.on('message', (reply: Buffer, remote: RemoteInfo) => {
      if (
        remote.address === upstream.host &&
        remote.port === upstream.port &&
        isReplyTo(reply, query)
      ) {
        settle(undefined, reply)
      }
    })
    socket.connect(upstream.port, upstream.host, () => {
      socket.send(query, (err) => {
        if (err !== null) {
          settle(err)
        }
      })
    })
    return () => socket.close()
  })
}

/** One query to one upstream over TCP, on a connection of its own. */
export function askTcp(
  upstream: Upstream,
  query: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Buffer> {
  return attempt(upstream, timeoutMs, signal, (settle) => {
    const socket = createConnection({ host: upstream.host, port: upstream.port })
    let received: Buffer = Buffer.alloc(0)
    socket.on('error', (err) => settle(err))
    socket.on('close', () => {
      settle(new UnavailableError(`${upstream.label} closed the connection before answering`))
    })
    socket.on('data', (chunk: Buffer) => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk])
      const next = takeFrame(received, 0xffff)
      if (next.kind !== 'message') {
        return
      }
      if (isReplyTo(next.message, query)) {
        settle(undefined, next.message)
      } else {
        settle(new UnavailableError(`${upstream.label} answered another query over TCP`))
      }
    })
    socket.write(frame(query))
    return () => socket.destroy()
  })
}
