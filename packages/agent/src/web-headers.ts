/**
 * A WHATWG `Headers` for the agent, installed as the global before Connect loads. Node 20's own
 * global Headers loads its whole fetch implementation (undici) on first touch, ~50 ms of every
 * sandbox's start on a small host; Connect's Node adapter needs only the Headers API itself.
 */

// RFC 9110 token characters for names; values must not contain NUL, CR or LF.
const namePattern = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const invalidValue = /[\0\r\n]/

function normalizeName(name: string): string {
  const text = String(name)
  if (!namePattern.test(text)) {
    throw new TypeError(`Headers: invalid header name ${JSON.stringify(text)}`)
  }
  return text.toLowerCase()
}

function normalizeValue(value: string): string {
  // Leading and trailing HTTP whitespace (tab, space, CR, LF) is not part of a value.
  const text = String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '')
  if (invalidValue.test(text)) {
    throw new TypeError(`Headers: invalid value for a header: ${JSON.stringify(text)}`)
  }
  return text
}

type HeadersInitLike =
  WebHeaders | Iterable<readonly [string, string]> | Record<string, string> | undefined

export class WebHeaders implements Headers {
  // Values per lowercased name; set-cookie keeps its values apart as the spec requires.
  readonly #map = new Map<string, string[]>()

  constructor(init?: HeadersInitLike) {
    if (init === undefined || init === null) {
      return
    }
    if (init instanceof WebHeaders) {
      init.forEach((value, name) => this.append(name, value))
    } else if (Symbol.iterator in Object(init)) {
      for (const pair of init as Iterable<readonly [string, string]>) {
        if (pair.length !== 2) {
          throw new TypeError('Headers: each init pair must be [name, value]')
        }
        this.append(pair[0], pair[1])
      }
    } else {
      for (const [name, value] of Object.entries(init as Record<string, string>)) {
        this.append(name, value)
      }
    }
  }

  append(name: string, value: string): void {
    const key = normalizeName(name)
    const values = this.#map.get(key)
    if (values === undefined) {
      this.#map.set(key, [normalizeValue(value)])
    } else {
      values.push(normalizeValue(value))
    }
  }

  set(name: string, value: string): void {
    this.#map.set(normalizeName(name), [normalizeValue(value)])
  }

  get(name: string): string | null {
    return this.#map.get(normalizeName(name))?.join(', ') ?? null
  }

  getSetCookie(): string[] {
    return [...(this.#map.get('set-cookie') ?? [])]
  }

  has(name: string): boolean {
    return this.#map.has(normalizeName(name))
  }

  delete(name: string): void {
    this.#map.delete(normalizeName(name))
  }

  forEach(
    callback: (value: string, key: string, parent: Headers) => void,
    thisArg?: unknown,
  ): void {
    for (const [name, value] of this.entries()) {
      callback.call(thisArg, value, name, this)
    }
  }

  /** Sorted by name, values combined, except that each set-cookie is its own entry (spec). */
  *entries(): IterableIterator<[string, string]> {
    for (const name of [...this.#map.keys()].sort()) {
      const values = this.#map.get(name) ?? []
      if (name === 'set-cookie') {
        for (const value of values) {
          yield [name, value]
        }
      } else {
        yield [name, values.join(', ')]
      }
    }
  }

  *keys(): IterableIterator<string> {
    for (const [name] of this.entries()) {
      yield name
    }
  }

  *values(): IterableIterator<string> {
    for (const [, value] of this.entries()) {
      yield value
    }
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries()
  }

  get [Symbol.toStringTag](): string {
    return 'Headers'
  }
}

/** Makes `WebHeaders` the global Headers; must run before anything touches globalThis.Headers. */
export function installWebHeaders(): void {
  Object.defineProperty(globalThis, 'Headers', {
    value: WebHeaders,
    writable: true,
    configurable: true,
    enumerable: false,
  })
}
