/**
 * A registry token service for tests, as Docker Hub runs one: GET /token?service=&scope=
 * answers a JWT signed with a key whose certificate the registry trusts (`auth.token` in its
 * config), after checking a Basic login; public repositories get anonymous pull tokens.
 */
import { execFileSync } from 'node:child_process'
import { createPrivateKey, randomUUID, sign, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'

export interface TokenServerOptions {
  /** Where the signing key and certificate are written. */
  dir: string
  /** The only login accepted. */
  login: { username: string; password: string }
  /** Repositories under this prefix may be pulled without a login. @default 'public/' */
  publicPrefix?: string
}

export interface TokenServer {
  /** `http://127.0.0.1:<port>/token`: the registry's `auth.token.realm`. */
  realm: string
  service: string
  issuer: string
  /** The certificate the registry verifies tokens with (`auth.token.rootcertbundle`). */
  certFile: string
  /** Token requests served so far (refused ones included). */
  requests(): number
  close(): Promise<void>
}

const base64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url')

/** Starts the token service on a free port of 127.0.0.1. */
export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const keyFile = join(options.dir, 'token-key.pem')
  const certFile = join(options.dir, 'token-cert.pem')
  execFileSync(
    'openssl',
    [
      ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'],
      ...['-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=sandcell test tokens'],
    ],
    { stdio: 'ignore' },
  )
  const key = createPrivateKey(readFileSync(keyFile))
  const certificate = new X509Certificate(readFileSync(certFile))
  const issuer = 'sandcell-test-tokens'
  const service = 'sandcell-test-registry'
  const publicPrefix = options.publicPrefix ?? 'public/'
  const expected = `Basic ${Buffer.from(`${options.login.username}:${options.login.password}`).toString('base64')}`
  let requests = 0

  const token = (subject: string, scopes: string[]): string => {
    const now = Math.floor(Date.now() / 1000)
    const access = scopes.flatMap((scope) => {
      const [type, name, actions] = scope.split(':')
      if (type !== 'repository' || name === undefined || actions === undefined) {
        return []
      }
      const allowed =
        subject === '' ? (name.startsWith(publicPrefix) ? ['pull'] : []) : actions.split(',')
      return [{ type, name, actions: allowed.filter((a) => actions.split(',').includes(a)) }]
    })
    const header = { typ: 'JWT', alg: 'ES256', x5c: [certificate.raw.toString('base64')] }
    const claims = {
      iss: issuer,
      sub: subject,
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    }
    const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`
    const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
    return `${input}.${base64url(signature)}`
  }

  const server: Server = createServer((request, response) => {
    requests += 1
    const url = new URL(request.url ?? '/', 'http://localhost')
    const authorization = request.headers.authorization
    if (url.pathname !== '/token') {
      response.writeHead(404).end()
      return
    }
    if (authorization !== undefined && authorization !== expected) {
      response
        .writeHead(401, { 'content-type': 'application/json' })
        .end('{"details":"incorrect username or password"}')
      return
    }
    const subject = authorization === undefined ? '' : options.login.username
    response.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        token: token(subject, url.searchParams.getAll('scope')),
        expires_in: 300,
      }),
    )
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certFile,
    requests: () => requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
