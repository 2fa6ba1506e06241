/** `ls -l` style mode strings (`-rw-r--r--`, `drwxr-xr-x`, `lrwxrwxrwx`). */
import { constants } from 'node:fs'

const typeChars: [number, string][] = [
  [constants.S_IFDIR, 'd'],
  [constants.S_IFLNK, 'l'],
  [constants.S_IFCHR, 'c'],
  [constants.S_IFBLK, 'b'],
  [constants.S_IFIFO, 'p'],
  [constants.S_IFSOCK, 's'],
  [constants.S_IFREG, '-'],
]

/** The ten-character `ls -l` permissions string for a full st_mode (type bits included). */
export function formatPermissions(mode: number): string {
  const type = mode & constants.S_IFMT
  const typeChar = typeChars.find(([bits]) => bits === type)?.[1] ?? '?'
  const triad = (shift: number, special: number, specialChar: string): string => {
    const bits = (mode >> shift) & 7
    const r = bits & 4 ? 'r' : '-'
    const w = bits & 2 ? 'w' : '-'
    const isSpecial = (mode & special) !== 0
    const x =
      bits & 1 ? (isSpecial ? specialChar : 'x') : isSpecial ? specialChar.toUpperCase() : '-'
    return r + w + x
  }
  // setuid, setgid and sticky bits (Node's fs.constants does not export them).
  return typeChar + triad(6, 0o4000, 's') + triad(3, 0o2000, 's') + triad(0, 0o1000, 't')
}
