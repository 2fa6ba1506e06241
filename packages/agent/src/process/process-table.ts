/** The running processes by pid (and tag), from start until their end event. */
import { InvalidArgumentError, ProcessNotFoundError, assertNever } from '@sandcell/shared'
import type { ManagedProcess } from './managed-process.js'

/** envd's ProcessSelector as protobuf-es gives it. */
export type ProcessSelectorInput =
  | { case: 'pid'; value: number }
  | { case: 'tag'; value: string }
  | { case: undefined; value?: undefined }

/** Processes started by this agent that have not ended yet. */
export class ProcessTable {
  readonly #processes = new Map<number, ManagedProcess>()

  /** Tracks a process until its `finished` settles. */
  add(process: ManagedProcess): void {
    this.#processes.set(process.pid, process)
    const forget = (): void => {
      if (this.#processes.get(process.pid) === process) {
        this.#processes.delete(process.pid)
      }
    }
    // `finished` never rejects; forgetting on rejection too keeps a bug from leaking the entry.
    process.finished.then(forget, forget)
  }

  /**
   * The process a selector names (a tag matches the earliest started process with it).
   * @throws InvalidArgumentError for an empty selector, ProcessNotFoundError when none matches.
   */
  get(selector: { selector: ProcessSelectorInput } | undefined): ManagedProcess {
    const choice = selector?.selector ?? { case: undefined }
    switch (choice.case) {
      case 'pid': {
        const found = this.#processes.get(choice.value)
        if (found === undefined) {
          throw new ProcessNotFoundError(`process with pid ${choice.value} not found`, {
            details: { pid: choice.value },
          })
        }
        return found
      }
      case 'tag': {
        for (const candidate of this.#processes.values()) {
          if (candidate.tag === choice.value) {
            return candidate
          }
        }
        throw new ProcessNotFoundError(
          `process with tag ${JSON.stringify(choice.value)} not found`,
          {
            details: { tag: choice.value },
          },
        )
      }
      case undefined:
        throw new InvalidArgumentError('process selector is required (pid or tag)')
      default:
        return assertNever(choice, 'process selector')
    }
  }

  /** Every running process, oldest first. */
  list(): ManagedProcess[] {
    return [...this.#processes.values()]
  }

  get size(): number {
    return this.#processes.size
  }

  /** Sends `signal` to every process group; used at shutdown. */
  killAll(signal: NodeJS.Signals): void {
    for (const process of this.#processes.values()) {
      process.io.kill(signal)
    }
  }

  /** Resolves when every process has ended, or after `timeoutMs`. */
  async waitAll(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.allSettled([...this.#processes.values()].map((p) => p.finished)),
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs)
      }),
    ])
    clearTimeout(timer)
  }
}
