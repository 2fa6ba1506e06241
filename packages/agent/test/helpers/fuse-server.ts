/**
 * A FUSE file system that is one empty directory, for tests that need a "network" mount (envd
 * counts FUSE as one). Run as a program (`fuse-server.ts DIR`, as root): it mounts itself at DIR,
 * prints "ready", and serves until killed, which aborts the mount (see fuse-mount.ts). It answers
 * just enough of the protocol (INIT, GETATTR, STATFS; ENOENT or ENOSYS for the rest) for stat,
 * statfs and watches.
 */
import { spawnSync } from 'node:child_process'
import { openSync, readSync, writeSync } from 'node:fs'

const opcodes = { lookup: 1, forget: 2, getattr: 3, statfs: 17, init: 26, batchForget: 42 }
const ENOENT = 2
const ENOSYS = 38
const inHeaderBytes = 40

const dir = process.argv[2]
if (dir === undefined) {
  throw new Error('usage: fuse-server.ts DIR')
}
const fd = openSync('/dev/fuse', 'r+')
// allow_other: the agent looks as the sandbox user; -i: mount(2) directly, no mount.fuse helper.
const mounted = spawnSync(
  'mount',
  [
    '-i',
    '-t',
    'fuse',
    '-o',
    'fd=3,rootmode=40755,user_id=0,group_id=0,allow_other',
    'sandcell-test-fuse',
    dir,
  ],
  { stdio: ['ignore', 'pipe', 'pipe', fd], encoding: 'utf8' },
)
if (mounted.status !== 0) {
  throw new Error(`mount fuse at ${dir} failed: ${mounted.stderr}${mounted.stdout}`)
}
process.stdout.write('ready\n')
// Blocking reads are what this program is for: nothing else runs here.
const buffer = Buffer.alloc(1024 * 1024)
for (;;) {
  let length: number
  try {
    length = readSync(fd, buffer, 0, buffer.length, null)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINTR') {
      continue
    }
    throw err // ENODEV: unmounted
  }
  reply(buffer.subarray(0, length))
}

function reply(request: Buffer): void {
  const opcode = request.readUInt32LE(4)
  const unique = request.readBigUInt64LE(8)
  if (opcode === opcodes.forget || opcode === opcodes.batchForget) {
    return // the kernel expects no answer
  }
  let body = Buffer.alloc(0)
  let error = 0
  switch (opcode) {
    case opcodes.init: {
      body = Buffer.alloc(64)
      body.writeUInt32LE(7, 0) // major
      body.writeUInt32LE(31, 4) // minor
      body.writeUInt32LE(request.readUInt32LE(inHeaderBytes + 8), 8) // max_readahead
      body.writeUInt32LE(4096, 20) // max_write
      break
    }
    case opcodes.getattr: {
      body = Buffer.alloc(104)
      body.writeBigUInt64LE(1n, 16) // attr.ino
      body.writeUInt32LE(0o40755, 16 + 60) // attr.mode
      body.writeUInt32LE(2, 16 + 64) // attr.nlink
      break
    }
    case opcodes.statfs: {
      body = Buffer.alloc(80)
      body.writeUInt32LE(4096, 40) // bsize
      body.writeUInt32LE(255, 44) // namelen
      break
    }
    case opcodes.lookup:
      error = -ENOENT
      break
    default:
      error = -ENOSYS
  }
  const out = Buffer.alloc(16 + body.length)
  out.writeUInt32LE(out.length, 0)
  out.writeInt32LE(error, 4)
  out.writeBigUInt64LE(unique, 8)
  body.copy(out, 16)
  try {
    writeSync(fd, error === 0 ? out : out.subarray(0, 16))
  } catch {
    // The request was interrupted or the file system is going away.
  }
}
