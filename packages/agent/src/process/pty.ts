/** Starts a child on a pseudo-terminal with node-pty (loaded on first use: it is a native addon). */
import { createRequire } from 'node:module'
import { constants } from 'node:os'
import type * as NodePtyModule from 'node-pty'
import type { IPty } from 'node-pty'
import { FailedPreconditionError, SandcellError } from '@sandcell/shared'
import { killGroup, type ChildIo, type SpawnSpec } from './child-io.js'

type NodePty = typeof NodePtyModule

let nodePty: Promise<NodePty> | undefined

/**
 * Loads node-pty once; later calls share the same promise. Through require, resolved from this
 * file: the bundled agent runs as a classic script, where import() has no module to resolve from.
 */
function loadNodePty(): Promise<NodePty> {
  nodePty ??= Promise.resolve()
    .then(() => createRequire(import.meta.url)('node-pty') as NodePty)
    .catch((err: unknown) => {
      nodePty = undefined
      throw new SandcellError('cannot load node-pty, PTYs are unavailable', { cause: err })
    })
  return nodePty
}

/** Options for {@link spawnPtyProcess}. */
export interface SpawnPtyOptions extends SpawnSpec {
  cols: number
  rows: number
}

/**
 * Spawns `file` on a new terminal of `cols`×`rows` as uid/gid. forkpty makes the child a session
 * leader, so its pid is also its process group. Output is raw bytes (no decoding), as envd sends.
 */
export async function spawnPtyProcess(options: SpawnPtyOptions): Promise<ChildIo> {
  const { spawn } = await loadNodePty()
  const term: IPty = spawn(options.file, [...options.args], {
    name: options.env.TERM ?? 'xterm-256color',
    cols: options.cols,
    rows: options.rows,
    cwd: options.cwd,
    env: { ...options.env },
    uid: options.uid,
    gid: options.gid,
    // Bytes in, bytes out: UTF-8 sequences split across chunks stay intact for the client.
    encoding: null,
  })
  const pid = term.pid
  // With encoding null node-pty delivers Buffers, although its typings say string.
  term.onData((data) => options.onOutput('pty', data as unknown as Buffer))
  const finished = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve) => {
      // node-pty reports exit after the terminal's output is drained (or 200 ms later).
      term.onExit(({ exitCode, signal }) => {
        const name = signal === undefined || signal === 0 ? undefined : signalName(signal)
        resolve(
          name === undefined ? { code: exitCode, signal: null } : { code: null, signal: name },
        )
      })
    },
  )
  return {
    pid,
    kind: 'pty',
    pauseOutput: () => term.pause(),
    resumeOutput: () => term.resume(),
    write(data) {
      term.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
      return Promise.resolve()
    },
    closeStdin() {
      throw new FailedPreconditionError(
        `process ${pid} runs on a terminal: send Ctrl-D (0x04) as pty input instead of closing stdin`,
      )
    },
    resize(cols, rows) {
      term.resize(cols, rows)
    },
    kill(signal) {
      killGroup(pid, signal)
    },
    finished,
  }
}

function signalName(signal: number): NodeJS.Signals | undefined {
  const entry = Object.entries(constants.signals).find(([, number]) => number === signal)
  return entry?.[0] as NodeJS.Signals | undefined
}
