/** Parses `WWW-Authenticate` challenges (RFC 7235) as registries send them: Bearer and Basic. */

/** One challenge: its scheme in lower case and its parameters (names in lower case). */
export interface AuthChallenge {
  scheme: string
  params: Record<string, string>
}

/**
 * Parses a `WWW-Authenticate` header value into its challenges, in order. Parameters may be
 * quoted (with `\` escapes) or bare tokens; a challenge's token68 form is kept as `token68`.
 * Malformed parts are skipped rather than thrown on: the caller reports the missing realm.
 */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const challenges: AuthChallenge[] = []
  let i = 0
  const skipSpaces = (): void => {
    while (i < header.length && (header[i] === ' ' || header[i] === '\t')) {
      i += 1
    }
  }
  const readToken = (): string => {
    const start = i
    while (i < header.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z/]/.test(header[i] as string)) {
      i += 1
    }
    return header.slice(start, i)
  }
  const readQuoted = (): string => {
    i += 1 // opening quote
    let value = ''
    while (i < header.length && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < header.length) {
        i += 1
      }
      value += header[i]
      i += 1
    }
    i += 1 // closing quote
    return value
  }
  while (i < header.length) {
    skipSpaces()
    if (header[i] === ',') {
      i += 1
      continue
    }
    const scheme = readToken()
    if (scheme === '') {
      i += 1
      continue
    }
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: {} }
    challenges.push(challenge)
    skipSpaces()
    // token68 (`Negotiate abc==`) stands alone; `name=value` pairs follow otherwise.
    const token68 = /^[A-Za-z0-9\-._~+/]+=*(?=\s*(,|$))/.exec(header.slice(i))
    if (token68 !== null) {
      challenge.params.token68 = token68[0]
      i += token68[0].length
      continue
    }
    for (;;) {
      skipSpaces()
      const start = i
      const name = readToken()
      skipSpaces()
      if (name === '' || header[i] !== '=') {
        // Not a parameter: the start of the next challenge.
        i = start
        break
      }
      i += 1 // '='
      skipSpaces()
      challenge.params[name.toLowerCase()] = header[i] === '"' ? readQuoted() : readToken()
      skipSpaces()
      if (header[i] !== ',') {
        break
      }
      i += 1
    }
  }
  return challenges
}
