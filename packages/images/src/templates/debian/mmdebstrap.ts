/** Runs mmdebstrap, the tool that assembles a Debian root filesystem from the archive. */
import { spawn } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { createInterface } from 'node:readline'
import { DriverError, errorMessage, type Logger } from '@sandcell/shared'
import type { TemplatePaths } from '../template-paths.js'
import type { BuildProgressTracker } from './build-progress.js'
import { MmdebstrapOutputParser } from './mmdebstrap-output.js'

// Docs, man pages, info and translations are ~25% of the image and unread in a sandbox. They
// are excluded through dpkg (so later `apt-get install`s in a sandbox skip them too) only after
// the essential packages: mmdebstrap filters their extraction through a Python helper started
// per package when path-exclude is set, which made the build 45 s slower.
const noDocsDpkgConfig = [
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/lintian/*',
]

export interface RunMmdebstrapOptions {
  /** The Debian release, e.g. bookworm. */
  suite: string
  buildDir: string
  packages: string[]
  mirrors: string[]
  paths: TemplatePaths
  progress: BuildProgressTracker
  signal?: AbortSignal
  log: Logger
}

/**
 * Runs mmdebstrap into `buildDir`, in its own mount and pid namespaces, feeding its output to
 * the progress tracker and to the build log; resolves with "mmdebstrap <version>".
 * @throws DriverError when mmdebstrap, setpriv or unshare is missing or the build fails (quoting
 * its last meaningful lines); the signal's reason when aborted.
 */
export async function runMmdebstrap(options: RunMmdebstrapOptions): Promise<string> {
  const { suite, buildDir, packages, mirrors, paths, progress, signal, log } = options
  const nodocs = noDocsDpkgConfig.map((line) => `'${line}'`).join(' ')
  const args = [
    '--mode=root',
    '--variant=apt',
    '--format=directory',
    // --verbose prints apt's and dpkg's own lines, which carry the package counts parsed below.
    '--verbose',
    ...(packages.length === 0 ? [] : [`--include=${packages.join(',')}`]),
    // Sandboxes are disposable: fsync per unpacked file buys nothing here.
    '--dpkgopt=force-unsafe-io',
    `--essential-hook=printf '%s\\n' ${nodocs} > "$1/etc/dpkg/dpkg.cfg.d/90sandcell-nodocs"`,
    '--customize-hook=chroot "$1" groupadd --gid 1000 user',
    '--customize-hook=chroot "$1" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash user',
    suite,
    buildDir,
    ...mirrors,
  ]
  const version = await mmdebstrapVersion(signal)
  const transcript = createWriteStream(paths.logPath, { flags: 'w', mode: 0o644 })
  transcript.on('error', (err) => {
    // The transcript is for operators; the build does not depend on it.
    log.warn({ err, logPath: paths.logPath }, 'cannot write the build transcript')
  })
  const parser = new MmdebstrapOutputParser(progress)
  log.debug({ args }, 'running mmdebstrap')
  // setpriv: if this process dies, the kernel kills unshare; unshare --kill-child then kills
  // mmdebstrap, the init of its own pid namespace, which takes every process of the build with
  // it, and the last process leaving the private mount namespace drops every chroot mount.
  const child = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'KILL',
      '--',
      'unshare',
      '--mount',
      '--propagation',
      'private',
      '--pid',
      '--fork',
      '--kill-child',
      '--mount-proc',
      '--',
      'mmdebstrap',
      ...args,
    ],
    // Its own process group, so an abort kills all of it at once.
    { detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  const onAbort = (): void => {
    if (child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  if (signal?.aborted === true) {
    onAbort()
  }
  const readLines = (stream: NodeJS.ReadableStream): Promise<void> =>
    new Promise((resolveLines) => {
      const lines = createInterface({ input: stream, crlfDelay: Infinity })
      lines.on('line', (line) => {
        transcript.write(`${line}\n`)
        parser.line(line)
      })
      lines.once('close', resolveLines)
    })
  try {
    const exit = new Promise<{ code: number | null; signalName: NodeJS.Signals | null }>(
      (resolveExit, reject) => {
        child.once('error', (err) => {
          reject(
            new DriverError(`cannot run setpriv/unshare (util-linux): ${errorMessage(err)}`, {
              cause: err,
            }),
          )
        })
        child.once('exit', (code, signalName) => resolveExit({ code, signalName }))
      },
    )
    const [{ code, signalName }] = await Promise.all([
      exit,
      readLines(child.stdout),
      readLines(child.stderr),
    ])
    signal?.throwIfAborted()
    if (code !== 0) {
      const lines = parser.summary()
      throw new DriverError(
        `mmdebstrap failed (${code === null ? `killed by ${signalName}` : `exit ${code}`}) building the debian template:\n  ${lines.join('\n  ')}\n` +
          `Check that the Debian mirror (${mirrors.length === 0 ? 'deb.debian.org and security.debian.org' : mirrors.join(', ')}) is reachable from this host (DNS, firewall, http_proxy), ` +
          `that ${paths.templateDir} has ~1 GB free, and read the full output in ${paths.logPath}.`,
        {
          details: { exitCode: code, signal: signalName, lastLines: lines, logPath: paths.logPath },
        },
      )
    }
    log.debug({ version }, 'mmdebstrap finished')
    return version
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await new Promise<void>((resolveEnd) => transcript.end(resolveEnd))
  }
}

/**
 * "mmdebstrap <version>"; also the check that it is installed.
 * @throws DriverError when it is not
 */
function mmdebstrapVersion(signal?: AbortSignal): Promise<string> {
  return new Promise((resolveVersion, reject) => {
    const child = spawn('mmdebstrap', ['--version'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      signal,
    })
    let out = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      out += chunk
    })
    child.once('error', (err) => {
      if (signal?.aborted === true) {
        reject(signal.reason as Error)
        return
      }
      reject(
        new DriverError(
          `building the debian template needs mmdebstrap: apt-get install mmdebstrap (${errorMessage(err)})`,
          { cause: err },
        ),
      )
    })
    child.once('close', () => resolveVersion(out.trim() || 'mmdebstrap'))
  })
}
