/** What every microVM boots with, whatever its template: kernel, initramfs, sandcell image. */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { resolveHostNode, type HostNode } from '../core/host-node.js'
import type { BuildContext } from './build-context.js'
import { ensureInitramfs } from './initramfs.js'
import { ensureGuestKernel, type GuestKernel } from './kernel.js'
import { ensureSandcellImage } from './sandcell-image.js'

export interface GuestBase {
  hostNode: HostNode
  kernel: GuestKernel
  initramfs: string
  sandcellImage: string
}

/** The kernel, initramfs and sandcell image every VM boots with, built on first use. */
export async function ensureGuestBase(build: BuildContext, agentDir: string): Promise<GuestBase> {
  const addons = [
    join(agentDir, 'node_modules/node-pty/build/Release/pty.node'),
    join(agentDir, 'native/sandcell_spawn.node'),
  ].filter((addon) => existsSync(addon))
  const hostNode = await resolveHostNode(addons)
  const kernel = await ensureGuestKernel(build)
  const initramfs = await ensureInitramfs(build, kernel)
  const sandcellImage = await ensureSandcellImage(build, hostNode, agentDir)
  return { hostNode, kernel, initramfs, sandcellImage }
}
