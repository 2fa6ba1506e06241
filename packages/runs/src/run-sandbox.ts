/**
 * A run's place in its sandbox: the directory its files go to and the user that owns them and
 * runs its stages; and writing the files (and stdin, for `{{stdin}}`) there through the agent.
 */
import { posix } from 'node:path'
import type { EnvdClient } from '@sandcell/envd-client'
import type { RunFile } from './run-files.js'

/** Where a run's files go, as the sandbox's user. */
export const runDirectory = '/home/user/code'
/** The file `{{stdin}}` names, outside the run directory so no request file can clash. */
export const stdinPath = '/home/user/.run-stdin'
/** The sandbox's user that owns a run's files and runs its stages. */
export const runUser = 'user'

/**
 * Writes the files into the run directory, and `stdin` (when given) to `stdinPath`.
 * @throws the errors of EnvdClient.uploadFile
 */
export async function writeRunFiles(
  connection: EnvdClient,
  files: readonly RunFile[],
  options: { stdin: Uint8Array | undefined; signal?: AbortSignal | undefined },
): Promise<void> {
  const { signal, stdin } = options
  await Promise.all([
    ...files.map((file) =>
      connection.uploadFile(posix.join(runDirectory, file.name), file.content, {
        user: runUser,
        ...(signal === undefined ? {} : { signal }),
      }),
    ),
    ...(stdin === undefined ? [] : [connection.uploadFile(stdinPath, stdin, { user: runUser })]),
  ])
}
