/** Packs a directory tree into a read-only erofs image with mkfs.erofs. */
import { runTool } from '../core/run-tool.js'

/** Packs `tree` into the read-only erofs image `image`. */
export async function mkfsErofs(image: string, tree: string, signal?: AbortSignal): Promise<void> {
  await runTool('mkfs.erofs', ['--quiet', '-T0', image, tree], {
    what: 'mkfs.erofs (is erofs-utils installed?)',
    ...(signal === undefined ? {} : { signal }),
  })
}
