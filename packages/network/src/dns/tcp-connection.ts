/**
 * One sandbox's DNS-over-TCP connection (RFC 7766): length-framed queries, pipelined answers
 * in any order, back-pressure on a client that sends without reading, an idle timeout that
 * does not count time spent waiting on upstreams, and every pending query abandoned on close.
 */
import type { Socket } from 'node:net'
import type { Logger } from '@sandcell/shared'
import { frame, maxQueryBytes, takeFrame } from './dns-message.js'
import type { DnsQuestion } from './dns-message.js'

/** What becomes of one message, decided at once: only forwarding has to wait. */
export type Judgement =
  { kind: 'drop' } | { kind: 'reply'; reply: Buffer } | { kind: 'forward'; question: DnsQuestion }

export interface TcpConnectionOptions {
  log: Logger
  sandboxId: string
  idleTimeoutMs: number
  judge(message: Buffer): Judgement
  /** Relays a judged query; the reply, or undefined when it was abandoned (`owner` aborted). */
  relay(
    message: Buffer,
    question: DnsQuestion,
    owner: Set<AbortController>,
  ): Promise<Buffer | undefined>
  /** Counts a message dropped without an answer. */
  dropped(): void
  onClose(): void
}

export function serveTcpConnection(socket: Socket, options: TcpConnectionOptions): void {
  const { log, sandboxId } = options
  const queries = new Set<AbortController>()
  let received: Buffer = Buffer.alloc(0)
  let ended = false
  let congested = false

  // Not socket.setTimeout: a connection waiting on a slow upstream is not idle.
  const idleTimer = setTimeout(function onIdle() {
    if (queries.size > 0) {
      idleTimer.refresh()
      return
    }
    log.debug({ sandboxId }, 'dns tcp connection idle; closing')
    socket.destroy()
  }, options.idleTimeoutMs)

  const write = (reply: Buffer): void => {
    if (!socket.writable) {
      return
    }
    idleTimer.refresh()
    // A client that sends without reading would otherwise pile replies up in memory.
    if (!socket.write(frame(reply))) {
      congested = true
      socket.pause()
    }
  }

  const endIfDone = (): void => {
    // A client may half-close after its last query: it still gets every answer first.
    if (ended && !congested && queries.size === 0 && socket.writable) {
      socket.end()
    }
  }

  const pump = (): void => {
    while (!congested && !socket.destroyed) {
      const next = takeFrame(received, maxQueryBytes)
      if (next.kind === 'incomplete') {
        break
      }
      if (next.kind === 'oversized') {
        options.dropped()
        log.debug({ sandboxId, sizeBytes: next.sizeBytes }, 'dns tcp message oversized; closing')
        socket.destroy()
        return
      }
      received = next.rest
      const judgement = options.judge(next.message)
      switch (judgement.kind) {
        case 'drop':
          socket.destroy()
          return
        case 'reply':
          write(judgement.reply)
          break
        case 'forward':
          // Not awaited: answers may go out in any order (RFC 7766 pipelining); relay() ends
          // by itself, and the connection's close abandons it.
          options.relay(next.message, judgement.question, queries).then(
            (reply) => {
              if (reply !== undefined) {
                write(reply)
              }
              endIfDone()
            },
            (err: unknown) => log.error({ err, sandboxId }, 'dns relay failed'),
          )
          break
      }
    }
    endIfDone()
  }

  socket.on('data', (chunk: Buffer) => {
    idleTimer.refresh()
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk])
    pump()
  })
  socket.on('end', () => {
    ended = true
    endIfDone()
  })
  socket.on('drain', () => {
    congested = false
    socket.resume()
    pump()
  })
  socket.on('close', () => {
    clearTimeout(idleTimer)
    options.onClose()
    for (const query of queries) {
      query.abort()
    }
  })
}
