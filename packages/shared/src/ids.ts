/** Branded identifiers: the only place ids are minted or parsed. */
import { randomBytes } from 'node:crypto'

declare const brand: unique symbol
type Brand<T, B extends string> = T & { readonly [brand]: B }

export type SandboxId = Brand<string, 'SandboxId'>
export type TemplateId = Brand<string, 'TemplateId'>

const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
const sandboxIdPattern = /^[a-z0-9]{20}$/

function randomToken(length: number): string {
  const bytes = randomBytes(length)
  let out = ''
  for (const byte of bytes) {
    // 36 does not divide 256, so the bias is < 1% per character: fine for unguessable-enough ids
    // that are also access-checked; tokens that guard access use `newSecret`.
    out += alphabet[byte % alphabet.length]
  }
  return out
}

/** A new sandbox id: 20 lowercase alphanumerics, safe in host names and paths. */
export function newSandboxId(): SandboxId {
  return randomToken(20) as SandboxId
}

export function isSandboxId(value: string): value is SandboxId {
  return sandboxIdPattern.test(value)
}

/** Parses an id from outside; returns undefined when it cannot be one of ours. */
export function parseSandboxId(value: string): SandboxId | undefined {
  return isSandboxId(value) ? value : undefined
}

/** A new template id: 20 lowercase alphanumerics, as E2B's. */
export function newTemplateId(): TemplateId {
  return randomToken(20) as TemplateId
}

/** A random secret for access tokens: 32 bytes, base64url. */
export function newSecret(): string {
  return randomBytes(32).toString('base64url')
}
