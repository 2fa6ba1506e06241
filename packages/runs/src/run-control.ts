/** Signals sent by a client to the stage of its run that is running now (interactive runs). */

export class RunControl {
  #send: ((signal: 'SIGTERM' | 'SIGKILL') => Promise<void>) | undefined

  /** Signals the running stage's process group; a no-op between stages. */
  async signal(signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
    await this.#send?.(signal)
  }

  /** @internal the run engine attaches the running stage. */
  attach(send: ((signal: 'SIGTERM' | 'SIGKILL') => Promise<void>) | undefined): void {
    this.#send = send
  }
}
