/**
 * Piston's API v2 (engineer-man/piston) under `/api/v2`: runtimes, execute, the read-only
 * package list and the interactive WebSocket, with Piston's field names, status codes and
 * `{ message }` error bodies, so existing Piston clients work unchanged. Bodies must be JSON;
 * `text/plain` is read as JSON too, because the `piston-client` npm package sends that.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import { handleRunApiError } from '../../error-handler.js'
import { toPistonResult, type RunService } from '@sandcell/runs'
import { connectRoute } from './connect.js'
import { parsePistonJob, pistonStdin } from './piston-job.js'

export interface PistonRoutesOptions {
  runs: RunService
  /** Largest request body, bytes. */
  bodyLimit: number
}

/** Registers the plugin; `app` must have @fastify/websocket registered first. */
export function pistonRoutes(app: FastifyInstance, options: PistonRoutesOptions): void {
  void app.register(
    (piston, _opts, done) => {
      const { runs } = options
      piston.setErrorHandler(handleRunApiError)
      piston.setNotFoundHandler((_request, reply) =>
        reply.status(404).send({ message: 'Not Found' }),
      )
      piston.removeContentTypeParser('text/plain')
      piston.addContentTypeParser(
        'text/plain',
        { parseAs: 'string', bodyLimit: options.bodyLimit },
        piston.getDefaultJsonParser('error', 'ignore'),
      )
      piston.addHook('onRequest', async (request, reply) => {
        if (['GET', 'HEAD', 'OPTIONS'].includes(request.method)) {
          return
        }
        const type = (request.headers['content-type'] ?? '').toLowerCase()
        if (!type.startsWith('application/json') && !type.startsWith('text/plain')) {
          await reply.status(415).send({ message: 'requests must be of type application/json' })
        }
      })

      piston.get('/runtimes', async () => {
        const languages = await runs.catalog.available()
        return languages.map(({ config, version }) => ({
          language: config.name,
          version,
          aliases: config.aliases,
          ...(config.runtime === undefined ? {} : { runtime: config.runtime }),
        }))
      })

      piston.post('/execute', { bodyLimit: options.bodyLimit }, async (request, reply) => {
        const job = await parsePistonJob(request.body, runs)
        const abort = new AbortController()
        reply.raw.once('close', () => {
          if (!reply.raw.writableFinished) {
            abort.abort(new Error('the client went away'))
          }
        })
        const result = await runs.execute({
          language: job.language,
          files: job.files,
          stdin: pistonStdin(job.stdin),
          args: job.args,
          compile: job.compile,
          run: job.run,
          signal: abort.signal,
        })
        void reply.header(
          'server-timing',
          Object.entries(result.timingsMs)
            .map(([name, ms]) => `${name};dur=${ms}`)
            .join(', '),
        )
        return toPistonResult(result)
      })

      piston.get('/packages', async () => {
        const statuses = await runs.catalog.statuses()
        const seen = new Set<string>()
        return statuses.flatMap((status, index) => {
          const config = runs.catalog.languages[index]
          const language = status.runtime ?? status.name
          const version = status.version ?? config?.version ?? '0.0.0'
          const key = `${language}-${version}`
          if (seen.has(key)) {
            return []
          }
          seen.add(key)
          return [{ language, language_version: version, installed: status.available }]
        })
      })

      const readOnly = async (_request: unknown, reply: FastifyReply) =>
        reply.status(501).send({
          message:
            'packages are not installed through the API here: languages come from the languages file (SANDCELL_LANGUAGES_FILE) and their templates',
        })
      piston.post('/packages', readOnly)
      piston.delete('/packages', readOnly)

      connectRoute(piston, { runs })
      done()
    },
    { prefix: '/api/v2' },
  )
}
