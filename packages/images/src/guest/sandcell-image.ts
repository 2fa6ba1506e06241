/** The image every VM mounts at /.sandcell: the host's node, its libraries and the agent. */
import { mkdirSync, rmSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { ensureArtifact, fileIdentity, hashParts, treeIdentity } from '../core/artifact-cache.js'
import type { HostNode } from '../core/host-node.js'
import { copyTree, linkOrCopy } from '../core/tree-copy.js'
import { guestImageVersion, reportProgress, type BuildContext } from './build-context.js'
import { mkfsErofs } from './erofs.js'

/** The read-only image mounted at /.sandcell: bin/node, lib/ (loader + libraries), agent/. */
export async function ensureSandcellImage(
  context: BuildContext,
  hostNode: HostNode,
  agentDir: string,
): Promise<string> {
  const libs = [hostNode.loader, ...hostNode.libraries]
  const key = hashParts([
    guestImageVersion,
    fileIdentity(hostNode.node),
    libs.map((lib) => `${lib.name}=${fileIdentity(lib.path)}`),
    treeIdentity(agentDir),
  ])
  const dir = await ensureArtifact(
    join(context.imagesDir, 'sandcell'),
    key,
    context,
    async (work) => {
      reportProgress(
        context,
        'sandcell-image',
        'packing node and the agent into the sandcell image',
      )
      const tree = join(work, 'tree')
      mkdirSync(join(tree, 'bin'), { recursive: true })
      mkdirSync(join(tree, 'lib'))
      linkOrCopy(hostNode.node, join(tree, 'bin', 'node'))
      for (const lib of libs) {
        linkOrCopy(lib.path, join(tree, 'lib', lib.name))
      }
      // A fixed name for the loader: sandcell-init runs node through it.
      symlinkSync(hostNode.loader.name, join(tree, 'lib', 'ld.so'))
      copyTree(agentDir, join(tree, 'agent'))
      await mkfsErofs(join(work, 'sandcell.erofs'), tree, context.signal)
      rmSync(tree, { recursive: true, force: true })
    },
  )
  return join(dir, 'sandcell.erofs')
}
