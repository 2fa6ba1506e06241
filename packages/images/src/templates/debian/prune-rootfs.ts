/** Removes from a Debian tree what a sandbox never reads: docs, translations, apt caches, logs. */
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'

/** Removes everything inside `dir`, keeping `dir` itself. */
export async function emptyDir(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    await rm(join(dir, name), { recursive: true, force: true })
  }
}

/** Deletes what the dpkg path-excludes cover, for the essential packages installed before them. */
export async function pruneDocs(root: string): Promise<void> {
  const share = join(root, 'usr/share')
  for (const dir of ['man', 'info', 'lintian']) {
    await emptyDir(join(share, dir)).catch(ignoreMissing)
  }
  const locale = join(share, 'locale')
  for (const name of await readdir(locale).catch(() => [])) {
    if (name !== 'locale.alias') {
      await rm(join(locale, name), { recursive: true, force: true })
    }
  }
  const doc = join(share, 'doc')
  for (const entry of await readdir(doc, { withFileTypes: true }).catch(() => [])) {
    // Copyright files stay: the licenses of what the image ships.
    if (entry.isDirectory()) {
      for (const name of await readdir(join(doc, entry.name))) {
        if (name !== 'copyright') {
          await rm(join(doc, entry.name, name), { recursive: true, force: true })
        }
      }
    }
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
    throw err
  }
}

/** Package lists and caches are rebuilt by `apt-get update`; logs describe the build host's run. */
export async function removeCaches(root: string): Promise<void> {
  for (const dir of ['var/lib/apt/lists', 'var/cache/apt', 'var/log/apt']) {
    await emptyDir(join(root, dir)).catch(ignoreMissing)
  }
  // apt expects these directories to exist.
  await mkdir(join(root, 'var/lib/apt/lists/partial'), { recursive: true })
  await mkdir(join(root, 'var/cache/apt/archives/partial'), { recursive: true })
  const files = [
    'var/log/dpkg.log',
    'var/log/alternatives.log',
    'var/cache/ldconfig/aux-cache',
    'var/cache/debconf/config.dat-old',
    'var/cache/debconf/templates.dat-old',
    'var/lib/dpkg/status-old',
    'var/lib/dpkg/diversions-old',
  ]
  for (const file of files) {
    await rm(join(root, file), { force: true })
  }
}
