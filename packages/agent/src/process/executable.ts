/** Finds the file a command name runs, so a bad command fails the RPC instead of the process. */
import { constants, statSync, type Stats } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { NotFoundError, PermissionDeniedError } from '@sandcell/shared'
import type { Credentials } from '../filesystem/as-user.js'

/** Options for {@link findExecutable}. */
export interface FindExecutableOptions {
  /** The command as the request gives it: a path (with a slash) or a name searched in PATH. */
  cmd: string
  /** PATH of the process's environment. */
  path: string
  /** Host path of the working directory, for relative commands like `./run.sh`. */
  cwd: string
  /** Who will exec it (execute permission is checked for them, without supplementary groups). */
  creds: Credentials
}

/**
 * The host path exec will run, mirroring execvp: a command with a slash is taken as a path, a
 * bare name is searched in PATH (first executable match wins, like the shell).
 * @throws NotFoundError naming the command when no such file exists.
 * @throws PermissionDeniedError when it exists but the user may not execute it (or is a directory).
 */
export function findExecutable(options: FindExecutableOptions): string {
  const { cmd, creds } = options
  if (cmd.includes('/')) {
    const file = isAbsolute(cmd) ? cmd : join(options.cwd, cmd)
    const stats = statOrUndefined(file)
    if (stats === undefined) {
      throw new NotFoundError(`command ${JSON.stringify(cmd)} not found`, { details: { cmd } })
    }
    if (!isExecutableBy(stats, creds)) {
      throw new PermissionDeniedError(`command ${JSON.stringify(cmd)} is not executable`, {
        details: { cmd },
      })
    }
    return file
  }
  let denied = false
  for (const dir of options.path.split(':')) {
    const file = join(dir === '' ? options.cwd : dir, cmd)
    const stats = statOrUndefined(file)
    if (stats === undefined) {
      continue
    }
    if (isExecutableBy(stats, creds)) {
      return file
    }
    denied = true
  }
  if (denied) {
    throw new PermissionDeniedError(`command ${JSON.stringify(cmd)} is not executable`, {
      details: { cmd },
    })
  }
  throw new NotFoundError(`command ${JSON.stringify(cmd)} not found in PATH`, {
    details: { cmd, path: options.path },
  })
}

function statOrUndefined(file: string): Stats | undefined {
  try {
    return statSync(file)
  } catch {
    return undefined
  }
}

/** The kernel's exec permission rule for a user without supplementary groups. */
function isExecutableBy(stats: Stats, creds: Credentials): boolean {
  if (!stats.isFile()) {
    return false
  }
  const mode = stats.mode
  if (creds.uid === 0) {
    return (mode & (constants.S_IXUSR | constants.S_IXGRP | constants.S_IXOTH)) !== 0
  }
  if (stats.uid === creds.uid) {
    return (mode & constants.S_IXUSR) !== 0
  }
  if (stats.gid === creds.gid) {
    return (mode & constants.S_IXGRP) !== 0
  }
  return (mode & constants.S_IXOTH) !== 0
}
