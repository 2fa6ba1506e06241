/** Lifecycle events of sandboxes, for the listeners that act on them (pool, evictor, metrics). */
import type { Logger } from '@sandcell/shared'
import type { DestroyReason, Sandbox } from './driver.js'

export type SandboxEvent =
  | { type: 'created'; sandbox: Sandbox; durationMs: number }
  | { type: 'adopted'; sandbox: Sandbox }
  | { type: 'paused'; sandbox: Sandbox }
  | { type: 'resumed'; sandbox: Sandbox }
  | { type: 'limits-changed'; sandbox: Sandbox }
  | { type: 'destroyed'; sandbox: Sandbox; reason: DestroyReason }

export type SandboxListener = (event: SandboxEvent) => void

/** A set of listeners; a throwing listener is logged and never breaks the sandbox or others. */
export class SandboxEvents {
  readonly #listeners = new Set<SandboxListener>()
  readonly #log: Logger

  constructor(log: Logger) {
    this.#log = log
  }

  /** Adds a listener; returns the function that removes it. */
  on(listener: SandboxListener): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  emit(event: SandboxEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event)
      } catch (err) {
        this.#log.error({ err, event: event.type, sandboxId: event.sandbox.id }, 'listener failed')
      }
    }
  }
}
