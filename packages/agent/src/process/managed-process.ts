/** A running sandbox process: its child, its event fan-out, and the end event when it finishes. */
import type { MessageInitShape } from '@bufbuild/protobuf'
import type { ExitOutcome, ProcessConfigSchema, ProcessEventSchema } from '@sandcell/protocol'
import type { Logger } from '@sandcell/shared'
import type { ChildIo, OutputChannel, SpawnSpec } from './child-io.js'
import { endEventOf } from './end-event.js'
import { OutputFanout, type Subscription } from './output-fanout.js'
import { spawnPipeProcess } from './spawn-pipe.js'
import { spawnPtyProcess } from './pty.js'

/** A wire ProcessEvent as handlers yield it. */
export type ProcessEventInit = MessageInitShape<typeof ProcessEventSchema>
/** The process config as the request gave it, reported by List. */
export type ProcessConfigInit = MessageInitShape<typeof ProcessConfigSchema>

/** Options for {@link startManagedProcess}. */
export interface StartManagedProcessOptions {
  spec: Omit<SpawnSpec, 'onOutput'>
  /** Run on a terminal of this size instead of pipes. */
  pty?: { cols: number; rows: number } | undefined
  /** Keep a stdin pipe (pipes only). */
  stdin: boolean
  tag?: string | undefined
  config: ProcessConfigInit
  /** See OutputFanoutOptions.stallMs. */
  stallMs: number
  log: Logger
}

/** A process the agent started and tracks until it ends. */
export interface ManagedProcess {
  readonly pid: number
  readonly tag: string | undefined
  readonly config: ProcessConfigInit
  readonly io: ChildIo
  /** Events from now on, starting with `start{pid}` and ending with `end`. */
  subscribe(): Subscription<ProcessEventInit>
  /** Resolves after the end event was published. */
  readonly finished: Promise<ExitOutcome>
}

/**
 * Spawns the process and returns it with a first subscription taken before any output could
 * arrive, so the starter sees everything.
 * @throws NotFoundError / PermissionDeniedError when exec fails.
 */
export async function startManagedProcess(
  options: StartManagedProcessOptions,
): Promise<{ process: ManagedProcess; subscription: Subscription<ProcessEventInit> }> {
  let io: ChildIo | undefined
  const fanout = new OutputFanout<ProcessEventInit>({
    stallMs: options.stallMs,
    pause: () => io?.pauseOutput(),
    resume: () => io?.resumeOutput(),
    log: options.log,
  })
  const first = fanout.subscribe()
  const onOutput = (channel: OutputChannel, chunk: Uint8Array): void => {
    fanout.publish(
      { event: { case: 'data', value: { output: { case: channel, value: chunk } } } },
      chunk.byteLength,
    )
  }
  try {
    io =
      options.pty === undefined
        ? await spawnPipeProcess({ ...options.spec, onOutput, stdin: options.stdin })
        : await spawnPtyProcess({ ...options.spec, onOutput, ...options.pty })
  } catch (err) {
    first.close()
    throw err
  }
  const child = io
  const finished = child.finished.then((outcome) => {
    fanout.end({ event: { case: 'end', value: endEventOf(outcome) } })
    return outcome
  })
  const startEvent: ProcessEventInit = { event: { case: 'start', value: { pid: child.pid } } }
  // A plain iterator, not a generator: return() must end it at once even while a next() is
  // pending (a generator would queue the return behind that next, which may never settle).
  const withStart = (
    subscription: Subscription<ProcessEventInit>,
  ): Subscription<ProcessEventInit> => ({
    close: () => subscription.close(),
    [Symbol.asyncIterator]() {
      const inner = subscription[Symbol.asyncIterator]()
      let started = false
      return {
        next() {
          if (!started) {
            started = true
            return Promise.resolve({ value: startEvent, done: false })
          }
          return inner.next()
        },
        return() {
          subscription.close()
          return Promise.resolve({ value: undefined, done: true })
        },
      }
    },
  })
  const process: ManagedProcess = {
    pid: child.pid,
    tag: options.tag,
    config: options.config,
    io: child,
    subscribe: () => withStart(fanout.subscribe()),
    finished,
  }
  return { process, subscription: withStart(first) }
}
