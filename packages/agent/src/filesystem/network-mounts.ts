/**
 * Which file systems envd counts as network mounts, whose directories a watch refuses unless the
 * client opts in (`allow_network_mounts`): inotify sees only this machine's changes there.
 */
import { statfsSync } from 'node:fs'

/** statfs `f_type` magic numbers (linux/magic.h) envd treats as network file systems. */
const networkFilesystemTypes: ReadonlyMap<number, string> = new Map([
  [0x6969, 'nfs'],
  [0xff534d42, 'cifs'],
  [0x517b, 'smb'],
  [0xfe534d42, 'smb2'],
  [0x65735546, 'fuse'],
])

/** The network file system's name for a statfs `f_type`, or undefined for a local one. */
export function networkFilesystemName(type: number): string | undefined {
  // f_type is a C long; a 32-bit magic with its top bit set may arrive sign-extended.
  return networkFilesystemTypes.get(type >>> 0)
}

/**
 * The network file system `hostPath` is on (NFS, CIFS, SMB, FUSE), or undefined. Path-based:
 * call inside the user's credential bracket.
 * @throws the Node error of statfs.
 */
export function networkFilesystemOf(hostPath: string): string | undefined {
  return networkFilesystemName(statfsSync(hostPath).type)
}
