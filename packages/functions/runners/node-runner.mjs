// sandcell's Node.js function runner: serves one function over HTTP on a Unix socket. Started
// as root inside the function's sandbox: binds the socket the host reaches, hands it to the
// function's user, drops to that user, then imports the handler once and answers requests one at
// a time. `handler(event, ctx)` (or the default export) gets the JSON body; its (awaited) return
// value is sent back as JSON.
import { chownSync, existsSync, unlinkSync } from 'node:fs'
import { createServer } from 'node:http'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [socketPath, codeDir, entry, name, user] = process.argv.slice(2)

function errorBody(code, message, details) {
  return JSON.stringify({ error: { code, message, ...(details === undefined ? {} : { details }) } })
}

function reply(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  })
  res.end(body)
}

if (existsSync(socketPath)) {
  unlinkSync(socketPath)
}
let handler
const server = createServer((req, res) => {
  const chunks = []
  req.on('data', (chunk) => chunks.push(chunk))
  req.on('end', async () => {
    const raw = Buffer.concat(chunks).toString('utf8')
    let event
    try {
      event = raw.trim() === '' ? {} : JSON.parse(raw)
    } catch (err) {
      reply(res, 400, errorBody('BAD_EVENT', `the request body is not JSON: ${err.message}`))
      return
    }
    try {
      const result = await handler(event, {
        name,
        method: req.method,
        path: req.url,
        headers: req.headers,
      })
      const body = JSON.stringify(result === undefined ? null : result)
      reply(res, 200, body)
    } catch (err) {
      reply(
        res,
        500,
        errorBody('FUNCTION_ERROR', 'the handler threw', { traceback: String(err?.stack ?? err) }),
      )
    }
  })
})
server.listen(socketPath, async () => {
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim())
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim())
  chownSync(socketPath, uid, gid)
  process.setgroups([])
  process.setgid(gid)
  process.setuid(uid)
  try {
    const module = await import(pathToFileURL(join(codeDir, entry)).href)
    handler = module.handler ?? module.default
    if (typeof handler !== 'function') {
      throw new Error(`${entry} exports no handler function`)
    }
  } catch (err) {
    process.stderr.write(`${err?.stack ?? err}\n`)
    process.exit(3)
  }
  process.stdout.write('ready\n')
})
