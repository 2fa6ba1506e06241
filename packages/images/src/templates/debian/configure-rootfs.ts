/**
 * Makes an mmdebstrap tree fit for sandboxes: host name and resolver placeholders, no machine-id,
 * login shells that start no process, no docs or apt caches, an empty /dev, and the right modes
 * on home and temp directories.
 */
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DriverError, errorMessage } from '@sandcell/shared'
import { debianRootProfile, loginProfile } from '../login-shell.js'
import type { BuildProgressTracker } from './build-progress.js'
import { emptyDir, pruneDocs, removeCaches } from './prune-rootfs.js'

const hostsFile = `127.0.0.1\tlocalhost
127.0.1.1\tsandbox
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
`

/**
 * A resolv.conf has to exist for the driver to bind one over it; until then, lookups fail fast
 * against localhost instead of hanging on, or leaking to, the build host's resolver.
 */
export const placeholderResolvConf = `# Placeholder written by sandcell's template builder: the sandbox's real resolver
# configuration replaces this file when a sandbox gets network access.
nameserver 127.0.0.1
`

/** The sandbox-specific touches mmdebstrap does not make, as countable steps. */
export async function configureRootfs(
  root: string,
  progress: BuildProgressTracker,
  signal?: AbortSignal,
): Promise<void> {
  const steps: [string, () => Promise<void>][] = [
    [
      'writing hostname, hosts and resolv.conf',
      async () => {
        await replaceFile(join(root, 'etc/hostname'), 'sandbox\n')
        await replaceFile(join(root, 'etc/hosts'), hostsFile)
        await replaceFile(join(root, 'etc/resolv.conf'), placeholderResolvConf)
      },
    ],
    [
      'removing machine-id',
      // Every sandbox would share it; systemd-less images do not need one.
      async () => {
        await rm(join(root, 'etc/machine-id'), { force: true })
        await rm(join(root, 'var/lib/dbus/machine-id'), { force: true })
      },
    ],
    [
      'writing login-shell files that start no process',
      async () => {
        await replaceFile(join(root, 'etc/profile'), loginProfile)
        await replaceFile(join(root, 'root/.profile'), debianRootProfile)
      },
    ],
    ['removing docs, man pages and translations', () => pruneDocs(root)],
    ['removing apt caches, lists and logs', () => removeCaches(root)],
    [
      'emptying /dev',
      // The sandbox gets its own /dev; device nodes in a lower layer are only risk.
      async () => {
        await emptyDir(join(root, 'dev'))
      },
    ],
    [
      'setting home and temp directories',
      async () => {
        await chmod(join(root, 'tmp'), 0o1777)
        await mkdir(join(root, 'var/tmp'), { recursive: true })
        await chmod(join(root, 'var/tmp'), 0o1777)
        await chmod(join(root, 'root'), 0o700)
        await chown(join(root, 'home/user'), 1000, 1000)
        await chmod(join(root, 'home/user'), 0o755)
      },
    ],
  ]
  progress.enter('configuring', steps.length, 'steps')
  for (const [message, run] of steps) {
    signal?.throwIfAborted()
    progress.message(message)
    try {
      await run()
    } catch (err) {
      throw new DriverError(
        `configuring the debian template failed while ${message}: ${errorMessage(err)}`,
        {
          cause: err,
        },
      )
    }
    progress.step(message)
  }
}

/** Writes a file in place of whatever is there (mmdebstrap copies the host's resolv.conf). */
async function replaceFile(path: string, content: string): Promise<void> {
  await rm(path, { force: true })
  await writeFile(path, content, { mode: 0o644 })
}
