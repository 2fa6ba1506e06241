/**
 * Reads mmdebstrap's --verbose output: progress from the stages it announces and the counts apt
 * and dpkg print, and the lines worth quoting when a build fails.
 */
import { assertNever } from '@sandcell/shared'
import type { BuildProgressTracker } from './build-progress.js'

// Lines that say nothing about why a build failed: progress, apt's package lists, dpkg's
// routine chatter, and mmdebstrap's own step announcements.
const noiseLine =
  /^(I: |Get:|Hit:|Ign:|Fetched |Unpacking |Setting up |Preparing to unpack |Selecting previously |Processing triggers |\(Reading database|Reading package lists|Building dependency tree|Reading state information|Calculating upgrade|\/usr\/bin\/dpkg |update-alternatives: |dpkg: warning: ignoring pre-dependency|dpkg: regarding |Chrooting into |Use of uninitialized value|Need to get |After this operation|The following|Suggested packages|Recommended packages|\d+ upgraded, )|(pre-depends on |is unpacked, but has never been configured|but is unpacked but not configured)|^\s+[a-z0-9.+:-]+( [a-z0-9.+:|-]+)*$/

const summaryLines = 10

/**
 * Reads mmdebstrap's --verbose output line by line: moves the progress tracker through the
 * stages its "I:" lines announce, counts apt's Get lines against the "N newly installed" it
 * resolved and dpkg's Unpacking/Setting up lines against twice that, and keeps the lines worth
 * quoting when the build fails.
 */
export class MmdebstrapOutputParser {
  readonly #progress: BuildProgressTracker
  readonly #recent: string[] = []
  #packages = 0
  #fetchSize: string | undefined

  constructor(progress: BuildProgressTracker) {
    this.#progress = progress
  }

  line(raw: string): void {
    const line = raw.trimEnd()
    if (line === '') {
      return
    }
    this.#remember(line)
    const progress = this.#progress
    const stage = progress.stage
    if (line.startsWith('I: ')) {
      this.#info(line.slice(3))
      return
    }
    const resolved = /^\d+ upgraded, (\d+) newly installed/.exec(line)
    if (resolved !== null && (stage === 'baseResolve' || stage === 'restResolve')) {
      this.#packages = Number(resolved[1])
      progress.enter(
        stage === 'baseResolve' ? 'baseDownload' : 'restDownload',
        this.#packages,
        'packages',
        stage === 'baseResolve' ? 'downloading the base system' : 'downloading packages',
      )
      return
    }
    const size = /^Need to get (\S+ \S+)/.exec(line)
    if (size !== null) {
      this.#fetchSize = size[1]
      progress.message(`downloading ${this.#fetchSize}`)
      return
    }
    switch (stage) {
      case 'baseDownload':
      case 'restDownload': {
        const get = /^Get:(\d+)\s+\S+\s+\S+\s+\S+\s+(\S+)/.exec(line)
        if (get !== null) {
          progress.advance(Number(get[1]), `${get[2]}${this.#sizeNote()}`)
        } else if (
          stage === 'restDownload' &&
          /^(Fetched |Selecting previously|Preparing to unpack|Unpacking )/.test(line)
        ) {
          // apt-get install goes straight from fetching to dpkg.
          progress.enter('restInstall', this.#packages * 2, 'steps', 'installing packages')
          this.#countDpkg(line)
        }
        return
      }
      case 'baseInstall':
      case 'restInstall':
        this.#countDpkg(line)
        return
      case undefined:
      case 'waiting':
      case 'preparing':
      case 'update':
      case 'baseResolve':
      case 'extract':
      case 'restResolve':
      case 'hooks':
      case 'configuring':
      case 'shifting':
      case 'finishing':
        return
      default:
        assertNever(stage, 'build stage')
    }
  }

  /** The lines to quote when mmdebstrap failed: its last meaningful ones, in order. */
  summary(): string[] {
    return [...this.#recent]
  }

  #sizeNote(): string {
    return this.#fetchSize === undefined ? '' : ` (of ${this.#fetchSize})`
  }

  #countDpkg(line: string): void {
    const dpkg = /^(Unpacking|Setting up) (\S+)/.exec(line)
    if (dpkg !== null) {
      this.#progress.step(`${dpkg[1]} ${dpkg[2]}`)
    }
  }

  #info(text: string): void {
    const progress = this.#progress
    if (text.startsWith('running apt-get update')) {
      progress.enter('update', 0, undefined, 'updating package lists')
    } else if (text.startsWith('downloading packages')) {
      this.#fetchSize = undefined
      progress.enter('baseResolve', 0, undefined, 'resolving the base system')
    } else if (text.startsWith('extracting archives')) {
      progress.enter('extract', 0, undefined, 'extracting the base system')
    } else if (text.startsWith('installing essential packages')) {
      progress.enter('baseInstall', this.#packages * 2, 'steps', 'installing the base system')
    } else if (text.startsWith('installing remaining packages')) {
      this.#fetchSize = undefined
      progress.enter('restResolve', 0, undefined, 'resolving the requested packages')
    } else if (text.startsWith('running --customize-hook')) {
      progress.enter('hooks', 0, undefined, 'adding user "user"')
    } else if (text.startsWith('cleaning package lists')) {
      progress.enter('hooks', 0, undefined, 'cleaning apt caches')
    }
  }

  #remember(line: string): void {
    if (!noiseLine.test(line)) {
      this.#recent.push(line)
      if (this.#recent.length > summaryLines) {
        this.#recent.shift()
      }
    }
  }
}
