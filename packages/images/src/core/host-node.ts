/**
 * Finds the host's Node binary and every shared library it (and the agent's native addons)
 * load, so they can be bind-mounted read-only into any template, glibc or not, and run through
 * the host's own dynamic loader.
 */
import { execFile } from 'node:child_process'
import { realpathSync } from 'node:fs'
import { basename } from 'node:path'
import { promisify } from 'node:util'
import { DriverError } from '@sandcell/shared'

const execFileAsync = promisify(execFile)

/** A library as the loader looks it up (`name`, its soname) and the real file behind it. */
export interface HostLibrary {
  name: string
  path: string
}

export interface HostNode {
  /** The node executable on the host. */
  node: string
  /** The dynamic loader (ld-linux) node was linked against. */
  loader: HostLibrary
  /** Every library node and the given addons need. */
  libraries: HostLibrary[]
}

async function lddPaths(file: string): Promise<{ loader?: HostLibrary; libraries: HostLibrary[] }> {
  const { stdout } = await execFileAsync('ldd', [file]).catch((err: unknown) => {
    throw new DriverError(`ldd ${file} failed; is libc-bin installed?`, { cause: err })
  })
  const libraries: HostLibrary[] = []
  let loader: HostLibrary | undefined
  for (const line of stdout.split('\n')) {
    const arrow = /^\s*(\S+)\s+=>\s+(\/\S+)/.exec(line)
    if (arrow?.[1] !== undefined && arrow[2] !== undefined) {
      libraries.push({ name: arrow[1], path: realpathSync(arrow[2]) })
      continue
    }
    const bare = /^\s*(\/\S+)\s+\(/.exec(line)
    if (bare?.[1] !== undefined) {
      loader = { name: basename(bare[1]), path: realpathSync(bare[1]) }
    }
  }
  return loader === undefined ? { libraries } : { loader, libraries }
}

/** Resolves node (process.execPath) plus the libraries of `addons` (e.g. node-pty's pty.node). */
export async function resolveHostNode(addons: readonly string[] = []): Promise<HostNode> {
  const node = realpathSync(process.execPath)
  const main = await lddPaths(node)
  if (main.loader === undefined) {
    throw new DriverError(`cannot find the dynamic loader of ${node}; a static node is unsupported`)
  }
  const libraries = new Map<string, HostLibrary>()
  for (const lib of main.libraries) {
    libraries.set(lib.name, lib)
  }
  for (const addon of addons) {
    for (const lib of (await lddPaths(addon)).libraries) {
      libraries.set(lib.name, lib)
    }
  }
  return { node, loader: main.loader, libraries: [...libraries.values()] }
}
