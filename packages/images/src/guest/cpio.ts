/** A writer of the `newc` cpio format, the one the Linux kernel unpacks as an initramfs. */

export type CpioEntry =
  | { kind: 'directory'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'char-device'; path: string; major: number; minor: number; mode?: number }

const fileTypes = {
  directory: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  'char-device': 0o020000,
} as const

function hex8(value: number): string {
  return value.toString(16).padStart(8, '0')
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4)
}

function record(
  ino: number,
  mode: number,
  data: Buffer,
  name: string,
  rdev: { major: number; minor: number } = { major: 0, minor: 0 },
): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8')
  const header = Buffer.from(
    [
      '070701',
      hex8(ino),
      hex8(mode),
      hex8(0), // uid: root
      hex8(0), // gid: root
      hex8(mode & fileTypes.directory ? 2 : 1),
      hex8(0), // mtime: fixed, so the same inputs give the same bytes
      hex8(data.length),
      hex8(0),
      hex8(0),
      hex8(rdev.major),
      hex8(rdev.minor),
      hex8(nameBytes.length),
      hex8(0),
    ].join(''),
    'ascii',
  )
  const headerAndName = header.length + nameBytes.length
  return [header, nameBytes, pad4(headerAndName), data, pad4(data.length)]
}

/**
 * Serialises `entries` in order (parents before children) into one uncompressed archive, owned
 * by root with mtime 0. Paths are relative to the archive root, without a leading slash.
 */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = []
  let ino = 1
  for (const entry of entries) {
    const path = entry.path.replace(/^\/+/, '')
    switch (entry.kind) {
      case 'directory':
        parts.push(
          ...record(ino++, fileTypes.directory | (entry.mode ?? 0o755), Buffer.alloc(0), path),
        )
        break
      case 'file':
        parts.push(...record(ino++, fileTypes.file | (entry.mode ?? 0o644), entry.data, path))
        break
      case 'symlink':
        parts.push(
          ...record(ino++, fileTypes.symlink | 0o777, Buffer.from(entry.target, 'utf8'), path),
        )
        break
      case 'char-device':
        parts.push(
          ...record(
            ino++,
            fileTypes['char-device'] | (entry.mode ?? 0o600),
            Buffer.alloc(0),
            path,
            {
              major: entry.major,
              minor: entry.minor,
            },
          ),
        )
        break
    }
  }
  parts.push(...record(0, 0, Buffer.alloc(0), 'TRAILER!!!'))
  return Buffer.concat(parts)
}
