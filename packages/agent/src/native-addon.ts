/** Loads the agent's native addon (native/: process creation and extended attributes) once. */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { constants } from 'node:os'
import { fileURLToPath } from 'node:url'
import { BugError } from '@sandcell/shared'

/** A path (a final symlink is never followed) or an open file descriptor. */
export type XattrTarget = string | number

/** The addon's functions; failures come back as a negative errno, never as a throw. */
export interface NativeAddon {
  spawn(
    file: string,
    argv: readonly string[],
    envp: readonly string[],
    cwd: string,
    uid: number,
    gid: number,
    withStdin: boolean,
    onExit: (code: number | null, signal: number | null) => void,
  ): number | [number, number, number, number]
  /** Attribute names as latin1 strings (one character per byte, so nothing is lost). */
  xattrList(target: XattrTarget): string[] | number
  /** `null` when the attribute does not exist. Only `user.*` names (else -EPERM). */
  xattrGet(target: XattrTarget, name: string): Buffer | null | number
  xattrSet(target: XattrTarget, name: string, value: Buffer): number
  /** Removing a missing attribute answers 0. */
  xattrRemove(target: XattrTarget, name: string): number
}

/**
 * The addon sits in native/ next to the bundle (bundle/agent-main.cjs), or in build/Release/ of
 * the package when running from source.
 */
const addonCandidates = [
  './native/sandcell_spawn.node',
  '../build/Release/sandcell_spawn.node',
].map((relative) => fileURLToPath(new URL(relative, import.meta.url)))

let addon: NativeAddon | undefined

/**
 * The addon, loaded on first use, which must happen outside any credential bracket (routes.ts
 * loads it at start): a sandbox user cannot read the agent's directory.
 * @throws BugError when it is missing (a broken build).
 */
export function nativeAddon(): NativeAddon {
  if (addon === undefined) {
    const path = addonCandidates.find((candidate) => existsSync(candidate))
    if (path === undefined) {
      throw new BugError(
        `the agent's native addon is missing (looked in ${addonCandidates.join(', ')})`,
      )
    }
    addon = createRequire(import.meta.url)(path) as NativeAddon
  }
  return addon
}

/** The errno name (`ENOENT`…) of an errno number, as Node's errors carry it in `code`. */
export function errnoCode(errno: number): string {
  return Object.entries(constants.errno).find(([, n]) => n === errno)?.[0] ?? `E${errno}`
}
