/** Runs the host tools image builds use (apt-get, dpkg-deb, gcc, mkfs.erofs, cp). */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { DriverError, errorMessage, standardPath } from '@sandcell/shared'

const execFileAsync = promisify(execFile)

/**
 * Runs a build tool to completion with the standard PATH and the C locale, and returns its
 * stdout.
 * @throws DriverError saying `what` failed, with the tool's stderr
 */
export async function runTool(
  file: string,
  args: readonly string[],
  options: { cwd?: string; signal?: AbortSignal; what: string; maxBuffer?: number },
): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args, {
      cwd: options.cwd,
      signal: options.signal,
      maxBuffer: options.maxBuffer ?? 16 * 1024 * 1024,
      // The rest of the environment passes: apt-get may need the operator's proxy settings.
      env: { ...process.env, PATH: standardPath, LC_ALL: 'C' },
    })
    return stdout
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new DriverError(`${options.what} failed: ${stderr || errorMessage(err)}`, { cause: err })
  }
}
