/** What an image build reports as it goes: the one progress shape every builder emits. */

export interface TemplateProgress {
  phase: string
  /** Units done in this phase, out of `total` (0 when the phase cannot be counted). */
  done: number
  total: number
  /** The whole build from 0 to 1, never going back, when the builder can tell. */
  fraction?: number
  message?: string
}
