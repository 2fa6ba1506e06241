/** What a Debian tree says it holds: its release and its installed packages (dpkg's status). */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

/** A file's trimmed text, or undefined when it cannot be read. */
function readTextFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** `name=version` of every installed package, from dpkg's status database. */
export function readInstalledPackages(root: string): string[] {
  const status = readTextFile(join(root, 'var/lib/dpkg/status'))
  if (status === undefined) {
    return []
  }
  const installed: string[] = []
  for (const stanza of status.split(/\n\n+/)) {
    const field = (key: string): string | undefined =>
      new RegExp(`^${key}: (.*)$`, 'm').exec(stanza)?.[1]
    const pkg = field('Package')
    const version = field('Version')
    if (pkg !== undefined && version !== undefined && field('Status') === 'install ok installed') {
      installed.push(`${pkg}=${version}`)
    }
  }
  return installed.sort()
}

/** Contents of the tree's /etc/debian_version, e.g. "12.12", or "unknown". */
export function readDebianVersion(root: string): string {
  return readTextFile(join(root, 'etc/debian_version')) ?? 'unknown'
}
