/**
 * The host side of the guest control channel: a line protocol with sandcell-init (PID 1 in the
 * guest) over the `sandcell.ctl` virtio-serial port, which QEMU exposes as a Unix socket.
 * Requests are `<id> <command> [args]`, answers `<id> ok [key=value…]` or `<id> err <text>`.
 * Under Firecracker the same protocol runs over vsock: the host connects to the VM's vsock Unix
 * socket and sends `CONNECT <port>\n` first, which Firecracker answers `OK <host port>\n`.
 * The guest is untrusted: answers are length-limited and parsed as numbers only.
 */
import { randomBytes } from 'node:crypto'
import { createConnection } from 'node:net'
import { DriverError, delay, withTimeout } from '@sandcell/shared'

export interface GuestStats {
  pids: number
  memTotalBytes: number
  memAvailableBytes: number
  oomKills: number
  diskTotalBytes: number
  diskFreeBytes: number
  agentReady: boolean
}

/** Splits an `ok` answer's `key=value` words; values that are not whole numbers are dropped. */
export function parseGuestFields(text: string): Map<string, number> {
  const fields = new Map<string, number>()
  for (const word of text.split(' ')) {
    const match = /^([a-z_]{1,32})=(\d{1,20})$/.exec(word)
    if (match?.[1] !== undefined && match[2] !== undefined) {
      fields.set(match[1], Number(match[2]))
    }
  }
  return fields
}

export function toGuestStats(fields: Map<string, number>): GuestStats {
  const get = (key: string): number => fields.get(key) ?? 0
  return {
    pids: get('pids'),
    memTotalBytes: get('mem_total'),
    memAvailableBytes: get('mem_available'),
    oomKills: get('oom_kills'),
    diskTotalBytes: get('disk_total'),
    diskFreeBytes: get('disk_free'),
    agentReady: get('ready') === 1,
  }
}

let nextRequest = 1

/**
 * First attempt's deadline, doubled on each retry: now and then a request sent right after
 * another client left gets no answer (lost between QEMU's chardev reconnect and the guest's
 * port), and is sent again; a guest that is merely slow gets ever more time. Most restores
 * under TCG lose their first request so (measured: 10 of 12), so this deadline is most of what
 * the loss costs a create; a warm guest answers in a few ms, a freshly restored one in ~200.
 */
const firstAttemptMs = 250

/** A request that did not get through (the guest may not have seen it): worth sending again. */
class RequestLost extends DriverError {}

/** The guest never answered a control request before its deadline (it did not refuse it). */
export class GuestSilentError extends DriverError {}

/** Whether `err`, or an error it wraps, is a {@link GuestSilentError}. */
export function isSilentGuest(err: unknown): boolean {
  for (let cause = err; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof GuestSilentError) {
      return true
    }
  }
  return false
}

/** Where the guest's control port is: a Unix socket, behind Firecracker's vsock handshake. */
export interface GuestChannel {
  socketPath: string
  /** The guest's vsock port, when `socketPath` is Firecracker's vsock socket. */
  vsockPort?: number
}

/** Firecracker's answer to `CONNECT <port>`: `OK <host port>`; anything else is a refusal. */
export function isVsockAccepted(line: string): boolean {
  return /^OK \d+$/.test(line.trim())
}

/**
 * Sends one request over a fresh connection and resolves with the words after `ok`. A fresh
 * connection per request: QEMU serves one client per chardev socket, and two owners of the same
 * VM (a restarted driver adopting it) must not lock each other out. Every command is idempotent,
 * so a request that got no answer in a few seconds is sent again until the deadline.
 * @throws DriverError for an `err` answer or when the deadline passes
 */
export async function guestRequest(
  channel: string | GuestChannel,
  command: string,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<string> {
  const name = command.split(' ')[0] ?? ''
  const signal = withTimeout(options.timeoutMs ?? 5000, options.signal)
  let last: unknown
  for (let attemptMs = firstAttemptMs; !signal.aborted; attemptMs *= 2) {
    try {
      return await attempt(
        typeof channel === 'string' ? { socketPath: channel } : channel,
        command,
        AbortSignal.any([signal, AbortSignal.timeout(attemptMs)]),
      )
    } catch (err) {
      if (!(err instanceof RequestLost)) {
        throw err
      }
      last = err
      await delay(20).catch(() => undefined)
    }
  }
  if (options.signal?.aborted ?? false) {
    throw options.signal?.reason as Error
  }
  throw new GuestSilentError(`the guest did not answer "${name}" in time`, { cause: last })
}

function attempt(channel: GuestChannel, command: string, signal: AbortSignal): Promise<string> {
  const id = String(nextRequest++)
  const name = command.split(' ')[0] ?? ''
  return new Promise<string>((resolve, reject) => {
    const socket = createConnection(channel.socketPath)
    let buffer = ''
    let handshaking = channel.vsockPort !== undefined
    let settled = false
    const finish = (err: Error | undefined, value?: string): void => {
      if (settled) {
        return
      }
      settled = true
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      if (err !== undefined) {
        reject(err)
      } else {
        resolve(value ?? '')
      }
    }
    const onAbort = (): void =>
      finish(new RequestLost(`no answer to "${name}"`, { cause: signal.reason }))
    if (signal.aborted) {
      onAbort()
      return
    }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.setEncoding('utf8')
    // No half-close after the request: QEMU takes it as the client leaving and drops the answer.
    socket.on('connect', () =>
      socket.write(handshaking ? `CONNECT ${channel.vsockPort}\n` : `${id} ${command}\n`),
    )
    socket.on('data', (chunk: string) => {
      buffer += chunk
      for (let newline = buffer.indexOf('\n'); newline >= 0; newline = buffer.indexOf('\n')) {
        const line = buffer.slice(0, newline)
        buffer = buffer.slice(newline + 1)
        if (handshaking) {
          if (!isVsockAccepted(line)) {
            // The guest is not listening yet (booting, restoring): worth another try.
            finish(
              new RequestLost(`vsock port ${channel.vsockPort} refused: ${line.slice(0, 100)}`),
            )
            return
          }
          handshaking = false
          socket.write(`${id} ${command}\n`)
          continue
        }
        if (!line.startsWith(`${id} `)) {
          continue // a late answer to an earlier client
        }
        const rest = line.slice(id.length + 1)
        if (rest === 'ok' || rest.startsWith('ok ')) {
          finish(undefined, rest.slice(3))
        } else {
          finish(new DriverError(`the guest refused "${name}": ${rest.slice(0, 200)}`))
        }
        return
      }
      if (buffer.length > 4096) {
        finish(new DriverError('the guest sent an overlong line on its control port'))
      }
    })
    // EAGAIN: the socket's backlog is full (another client is being served), worth a retry;
    // ENOENT or ECONNREFUSED: QEMU is gone.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const message = `guest control socket: ${err.message}`
      finish(
        err.code === 'EAGAIN'
          ? new RequestLost(message, { cause: err })
          : new DriverError(message, { cause: err }),
      )
    })
    socket.on('close', () => finish(new RequestLost('the guest control socket closed')))
  })
}

/**
 * The guest sets its clock to the time it was sent: one answered later than this was already
 * behind by up to as much (a freshly restored guest takes a few hundred ms, under TCG, to answer
 * its first request, and a lost request is sent again a second later), so the time is sent
 * again, up to `syncRounds` times; a warm guest answers in a few ms.
 */
const syncPrecisionMs = 50
const syncRounds = 3

/**
 * Tells the guest the time and gives it fresh entropy: after a restore or a pause its clock is
 * behind, and every copy restored from one state starts with the same random pool.
 */
export async function syncGuest(
  channel: string | GuestChannel,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<void> {
  const seed = ` ${randomBytes(32).toString('hex')}`
  for (let round = 1; round <= syncRounds; round++) {
    const sentMs = performance.now()
    const nowNs = BigInt(Date.now()) * 1_000_000n
    await guestRequest(channel, `sync ${nowNs}${round === 1 ? seed : ''}`, options)
    if (performance.now() - sentMs <= syncPrecisionMs) {
      return
    }
  }
}
