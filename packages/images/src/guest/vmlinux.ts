/** Unpacks the ELF `vmlinux` that QEMU boots directly (PVH) from a distribution's bzImage. */
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { DriverError } from '@sandcell/shared'

export type KernelCompression = 'lz4' | 'gzip' | 'xz' | 'zstd' | 'bzip2' | 'lzma'

/** Magic bytes each compressor's stream starts with (as the kernel's extract-vmlinux looks for). */
export const compressionMagic: Record<KernelCompression, Buffer> = {
  lz4: Buffer.from([0x02, 0x21, 0x4c, 0x18]),
  gzip: Buffer.from([0x1f, 0x8b, 0x08]),
  xz: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
  zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
  bzip2: Buffer.from('BZh', 'latin1'),
  lzma: Buffer.from([0x5d, 0x00, 0x00, 0x00]),
}

/**
 * Every place in a bzImage where a compressed payload may start, in the order worth trying:
 * by format (LZ4 first: Debian's choice), then by offset. Most are false hits inside other
 * data; the caller decompresses each until one yields an ELF file.
 */
export function findCompressedPayloads(
  image: Buffer,
  formats: readonly KernelCompression[] = ['lz4', 'zstd', 'xz', 'gzip', 'bzip2', 'lzma'],
): { format: KernelCompression; offset: number }[] {
  const found: { format: KernelCompression; offset: number }[] = []
  for (const format of formats) {
    const magic = compressionMagic[format]
    for (let at = image.indexOf(magic); at >= 0; at = image.indexOf(magic, at + 1)) {
      found.push({ format, offset: at })
    }
  }
  return found
}

/** Whether `data` starts like an ELF executable (what a PVH boot needs). */
export function isElf(data: Buffer): boolean {
  return data.length >= 4 && data.readUInt32BE(0) === 0x7f454c46
}

/**
 * Finds the compressed kernel inside a bzImage by its magic bytes and decompresses it with the
 * matching Debian tool, as the kernel's own scripts/extract-vmlinux does.
 * @throws DriverError when no candidate decompresses to an ELF file
 */
export async function extractVmlinux(
  bzImage: string,
  output: string,
  signal?: AbortSignal,
): Promise<KernelCompression> {
  const image = readFileSync(bzImage)
  const tools: Record<KernelCompression, string[]> = {
    lz4: ['lz4', '-dc'],
    gzip: ['gzip', '-dc'],
    xz: ['xz', '-dc'],
    zstd: ['zstd', '-dcq'],
    bzip2: ['bzip2', '-dc'],
    lzma: ['xz', '--format=lzma', '-dc'],
  }
  for (const { format, offset } of findCompressedPayloads(image)) {
    const [tool, ...args] = tools[format]
    if (tool === undefined) {
      continue
    }
    const data = await decompress(tool, args, image.subarray(offset), signal).catch(() => undefined)
    if (data !== undefined && isElf(data)) {
      writeFileSync(output, data)
      return format
    }
  }
  throw new DriverError(
    `no compressed ELF kernel found in ${bzImage}; are lz4, zstd, xz-utils and gzip installed?`,
  )
}

/** Runs a decompressor over `input`; trailing garbage after the stream is tolerated. */
function decompress(
  tool: string,
  args: string[],
  input: Buffer,
  signal?: AbortSignal,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, {
      stdio: ['pipe', 'pipe', 'ignore'],
      ...(signal === undefined ? {} : { signal }),
    })
    const chunks: Buffer[] = []
    let size = 0
    child.stdout.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      size += chunk.length
      if (size === chunk.length && !isElf(chunk)) {
        child.kill() // a false magic hit: not worth decompressing to the end
      }
    })
    child.on('error', reject)
    child.stdin.on('error', () => undefined) // the tool may stop reading early: expected
    child.on('close', () => {
      const data = Buffer.concat(chunks)
      // Decompressors exit non-zero on trailing data; what they wrote before is the kernel.
      if (data.length > 0) {
        resolve(data)
      } else {
        reject(new Error(`${tool} produced nothing`))
      }
    })
    child.stdin.end(input)
  })
}
