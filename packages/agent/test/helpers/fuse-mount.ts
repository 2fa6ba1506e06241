/** Mounts the test FUSE file system of fuse-server.ts, served by a child process. */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'

/** A mounted test file system; `unmount()` stops its server and detaches it (idempotent). */
export interface FuseMount {
  unmount(): Promise<void>
}

const serverPath = new URL('./fuse-server.ts', import.meta.url).pathname

/**
 * Mounts an empty FUSE directory at `dir` (an existing directory). Needs root and /dev/fuse.
 * @throws Error with the server's output when it does not come up.
 */
export async function mountEmptyFuse(dir: string): Promise<FuseMount> {
  const server = spawn(process.execPath, ['--import', 'tsx', serverPath, dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  server.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  server.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  const exited = once(server, 'exit')
  await new Promise<void>((resolve, reject) => {
    const onData = (): void => {
      if (output.includes('ready\n')) {
        server.stdout.off('data', onData)
        resolve()
      }
    }
    server.stdout.on('data', onData)
    void exited.then(() => reject(new Error(`the FUSE server exited: ${output}`)))
  })
  let unmounted = false
  return {
    async unmount() {
      if (unmounted) {
        return
      }
      unmounted = true
      // Killing the server releases /dev/fuse, which aborts the connection; then detach.
      server.kill('SIGKILL')
      await exited
      spawnSync('umount', ['-l', dir])
    },
  }
}
