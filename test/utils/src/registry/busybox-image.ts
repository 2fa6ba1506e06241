/**
 * A real, usable image for tests that build templates: Debian's static busybox with its applet
 * links, /etc/passwd and /etc/group with root and user, /tmp and home directories; one layer.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { buildLayer, type LayerEntry } from './layer-tar.js'
import { pushImage, type PushedImage } from './push-image.js'

const busyboxPath = '/bin/busybox'

const passwd = `root:x:0:0:root:/root:/bin/sh
user:x:1000:1000::/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`

const group = `root:x:0:
user:x:1000:
nogroup:x:65534:
`

/** The busybox image's entries (busybox-static must be installed). */
export function busyboxEntries(): LayerEntry[] {
  const applets = execFileSync(busyboxPath, ['--list-full'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line !== '' && line !== 'bin/busybox')
  const dirs = new Set<string>([
    'bin',
    'sbin',
    'usr',
    'usr/bin',
    'usr/sbin',
    'etc',
    'home',
    'proc',
    'sys',
    'dev',
  ])
  for (const applet of applets) {
    const parts = applet.split('/')
    for (let i = 1; i < parts.length; i += 1) {
      dirs.add(parts.slice(0, i).join('/'))
    }
  }
  return [
    ...[...dirs].sort().map((path): LayerEntry => ({ type: 'dir', path })),
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'root', mode: 0o700 },
    { type: 'dir', path: 'home/user', uid: 1000, gid: 1000 },
    { type: 'file', path: 'bin/busybox', mode: 0o755, content: readFileSync(busyboxPath) },
    ...applets.map((path): LayerEntry => ({ type: 'symlink', path, target: '/bin/busybox' })),
    { type: 'file', path: 'etc/passwd', content: passwd },
    { type: 'file', path: 'etc/group', content: group },
    { type: 'file', path: 'etc/hostname', content: 'sandbox\n' },
  ]
}

/**
 * Pushes the busybox image to `host` as `repoAndTag` (e.g. `sandcell/busybox:1`): PATH set,
 * `/bin/sh` as its command.
 */
export async function pushBusyboxImage(host: string, repoAndTag: string): Promise<PushedImage> {
  const layer = await buildLayer(busyboxEntries())
  return pushImage(host, repoAndTag, {
    layers: [layer],
    config: {
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      cmd: ['/bin/sh'],
    },
  })
}
