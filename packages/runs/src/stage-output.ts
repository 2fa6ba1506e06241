/**
 * What one stage of a run printed: stdout and stderr decoded as UTF-8 (characters split across
 * chunks kept whole), both interleaved in arrival order, each stream capped at a number of
 * characters. Reaching a cap is reported (the stream is named), never a silent cut.
 */
import { StringDecoder } from 'node:string_decoder'

export type OutputStream = 'stdout' | 'stderr'

export interface CapturedOutput {
  stdout: string
  stderr: string
  /** Both streams in the order their data arrived. */
  output: string
  /** The first stream that reached the cap, if any (its text stops at exactly the cap). */
  exceeded: OutputStream | undefined
}

export class StageOutput {
  readonly #maxChars: number
  readonly #onExceeded: (stream: OutputStream) => void
  readonly #decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') }
  readonly #text = { stdout: '', stderr: '' }
  readonly #full = { stdout: false, stderr: false }
  #output = ''
  #exceeded: OutputStream | undefined

  /**
   * @param maxChars characters kept per stream
   * @param onExceeded called once, when the first stream reaches the cap (to kill the stage)
   */
  constructor(maxChars: number, onExceeded: (stream: OutputStream) => void) {
    this.#maxChars = maxChars
    this.#onExceeded = onExceeded
  }

  /** Takes a chunk; returns the text kept from it (empty once its stream is full). */
  push(stream: OutputStream, chunk: Uint8Array): string {
    return this.#accept(stream, this.#decoders[stream].write(Buffer.from(chunk)))
  }

  #accept(stream: OutputStream, text: string): string {
    if (this.#full[stream] || text === '') {
      return ''
    }
    const room = this.#maxChars - this.#text[stream].length
    let kept = text
    if (text.length > room) {
      let cut = Math.max(0, room)
      // Never end on the first half of a surrogate pair.
      if (cut > 0 && /[\uD800-\uDBFF]/.test(text.charAt(cut - 1))) {
        cut -= 1
      }
      kept = text.slice(0, cut)
      this.#full[stream] = true
    }
    this.#text[stream] += kept
    this.#output += kept
    if (this.#full[stream] && this.#exceeded === undefined) {
      this.#exceeded = stream
      this.#onExceeded(stream)
    }
    return kept
  }

  /** Flushes partial characters (as U+FFFD) and returns everything kept. */
  finish(): CapturedOutput {
    for (const stream of ['stdout', 'stderr'] as const) {
      this.#accept(stream, this.#decoders[stream].end())
    }
    return {
      stdout: this.#text.stdout,
      stderr: this.#text.stderr,
      output: this.#output,
      exceeded: this.#exceeded,
    }
  }
}
