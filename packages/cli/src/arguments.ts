/** Parsers for command-line values that commander hands over as strings. */
import { InvalidArgumentError as CommanderArgumentError } from 'commander'

/** A positive number (or integer) flag, e.g. `--timeout-ms`. */
export function parsePositive(name: string, integer: boolean) {
  return (value: string): number => {
    const number = Number(value)
    if (!Number.isFinite(number) || number <= 0 || (integer && !Number.isInteger(number))) {
      throw new CommanderArgumentError(
        `${name} must be a positive ${integer ? 'integer' : 'number'}`,
      )
    }
    return number
  }
}

/** A repeatable `--env KEY=VALUE`: the key must be a shell variable name. */
export function parseEnv(value: string, previous: string[]): string[] {
  if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(value)) {
    throw new CommanderArgumentError(`--env takes KEY=VALUE, got ${JSON.stringify(value)}`)
  }
  return [...previous, value]
}

/** A repeatable `--metadata key=value`: any non-empty key. */
export function parseMetadata(value: string, previous: string[]): string[] {
  if (!/^[^=]+=/.test(value)) {
    throw new CommanderArgumentError(`--metadata takes KEY=VALUE, got ${JSON.stringify(value)}`)
  }
  return [...previous, value]
}

/** A repeatable value, commas allowed (`--allow-out 1.1.1.1,example.com`). */
export function collectList(value: string, previous: string[]): string[] {
  return [
    ...previous,
    ...value
      .split(',')
      .map((part) => part.trim())
      .filter((part) => part.length > 0),
  ]
}

/** `KEY=VALUE` pairs as a record; the value is everything after the first `=`, a later key wins. */
export function pairsToRecord(pairs: readonly string[]): Record<string, string> {
  return Object.fromEntries(
    pairs.map((pair) => {
      const at = pair.indexOf('=')
      return [pair.slice(0, at), pair.slice(at + 1)]
    }),
  )
}

const states = ['running', 'paused'] as const
export type StateFilter = (typeof states)[number]

/** A repeatable `--state running|paused`, commas allowed (`--state running,paused`). */
export function parseState(value: string, previous: StateFilter[]): StateFilter[] {
  const next = [...previous]
  for (const part of value.split(',')) {
    const state = states.find((s) => s === part.trim())
    if (state === undefined) {
      throw new CommanderArgumentError(
        `--state takes running or paused, got ${JSON.stringify(part)}`,
      )
    }
    if (!next.includes(state)) {
      next.push(state)
    }
  }
  return next
}
