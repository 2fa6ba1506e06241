/** Dialling the name a sandbox asked for, abandoned at once when the sandbox goes away. */
import { connect, type Socket } from 'node:net'

/** `promise`, or its rejection with the signal's reason once `signal` aborts first. */
export function rejectOnAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error)
    if (signal.aborted) {
      onAbort()
      return
    }
    signal.addEventListener('abort', onAbort, { once: true })
    promise.finally(() => signal.removeEventListener('abort', onAbort)).then(resolve, reject)
  })
}

/** One TCP connect to `address`, destroyed when `signal` aborts first. */
export function connectTo(address: string, port: number, signal: AbortSignal): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason as Error)
      return
    }
    // allowHalfOpen: the sandbox's half-close is passed on, not turned into a full close.
    const socket = connect({ host: address, port, allowHalfOpen: true })
    const settle = () => {
      signal.removeEventListener('abort', onAbort)
      socket.off('connect', onConnect)
      socket.off('error', onError)
    }
    const onAbort = () => {
      settle()
      socket.destroy()
      reject(signal.reason as Error)
    }
    const onConnect = () => {
      settle()
      resolve(socket)
    }
    const onError = (err: Error) => {
      settle()
      socket.destroy()
      reject(err)
    }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('connect', onConnect)
    socket.once('error', onError)
  })
}
