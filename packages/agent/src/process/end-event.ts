/** The end event of a process as envd sends it (Go's ProcessState wording, error on failure). */
import type { MessageInitShape } from '@bufbuild/protobuf'
import {
  formatExitStatus,
  type ExitOutcome,
  type ProcessEvent_EndEventSchema,
} from '@sandcell/protocol'

/** The wire EndEvent as handlers send it. */
export type EndEventInit = MessageInitShape<typeof ProcessEvent_EndEventSchema>

/**
 * exit code / exited / status from formatExitStatus; `error` repeats the status when the process
 * did not exit 0, because the e2b SDK builds CommandExitError's message from it.
 */
export function endEventOf(outcome: ExitOutcome): EndEventInit {
  const status = formatExitStatus(outcome)
  const failed = !(status.exited && status.exitCode === 0)
  return { ...status, ...(failed ? { error: status.status } : {}) }
}
