/**
 * Host checks and guest artifacts both microVM drivers need before their first VM: tools on
 * PATH, the guest kernel, initramfs and sandcell image (with the host's Node), and a template's
 * root filesystem as an image.
 */
import { standardPath } from '@sandcell/shared'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { ProbeResult } from '../../driver.js'
import { resolveHostNode, type HostNode } from '../../os/host-node.js'
import {
  ensureGuestKernel,
  ensureInitramfs,
  ensureSandcellImage,
  ensureTemplateImage,
  type BuildContext,
  type GuestKernel,
} from './guest-image.js'
import type { MicroVmSettings } from './microvm-settings.js'

/** What is wrong for each `[tool, Debian package]` not found in the standard PATH. */
export function missingTools(needed: readonly (readonly [string, string])[]): string[] {
  const path = standardPath.split(':')
  const problems: string[] = []
  for (const [tool, pkg] of needed) {
    if (!path.some((dir) => dir.length > 0 && existsSync(join(dir, tool)))) {
      problems.push(`${tool} is missing: apt-get install ${pkg}`)
    }
  }
  return problems
}

export function toProbeResult(problems: string[], details: Record<string, string>): ProbeResult {
  const result: ProbeResult = { usable: problems.length === 0, details }
  if (problems.length > 0) {
    result.reason = problems.join('; ')
  }
  return result
}

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

/** The template, prepared (built when needed), as a read-only image for VMs. */
export async function ensureTemplateRootfs(
  settings: MicroVmSettings,
  template: string,
  context: Partial<BuildContext>,
): Promise<string> {
  const prepared = await settings.templates.prepare(template, {
    ...(context.signal === undefined ? {} : { signal: context.signal }),
    ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
  })
  return ensureTemplateImage(
    { imagesDir: settings.imagesDir, log: settings.log, ...context },
    {
      name: template,
      rootfsDir: prepared.rootfsDir,
      uidOffset: settings.uidBase,
      withBusybox: prepared.hostBinds.length > 0,
    },
  )
}
