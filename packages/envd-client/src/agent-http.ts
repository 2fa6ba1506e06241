/**
 * envd's plain HTTP routes (`/files` upload and download, `/init`, `/health`) and sandcell's
 * `/archive` over undici: one way to send a request on either route to an agent and one error
 * table for what comes back.
 */
import { Readable } from 'node:stream'
import type { ReadableStream } from 'node:stream/web'
import { request, type Dispatcher } from 'undici'
import { z } from 'zod'
import { basicAuthorization, defaultUser, envdHeaders } from '@sandcell/protocol'
import { DriverError, InvalidArgumentError, type SandcellError } from '@sandcell/shared'
import {
  errorFromBadBody,
  errorFromResponse,
  parseJsonBody,
  requestFailure,
  serverMessage,
  type RequestContext,
} from './http-errors.js'

/** Where plain HTTP requests to one agent go. */
export interface HttpRoute {
  /** What every URL starts with, no trailing slash (a placeholder host on a socket). */
  baseUrl: string
  dispatcher: Dispatcher
  /** Sent with every request: the routing headers and token through the server. */
  headers: Record<string, string>
  /** What errors name: the server or socket, and the sandbox. */
  context: Pick<RequestContext, 'serverUrl' | 'sandboxId' | 'agentSocket'>
}

/** Data to upload: bytes, text (UTF-8) or a stream of chunks (a Node Readable is one). */
export type UploadData = Uint8Array | string | AsyncIterable<Uint8Array>

/** A file `/files` wrote. */
export interface UploadedFile {
  name: string
  path: string
  type: 'file'
}

/** envd's upload answer: the files written. */
const uploadedFilesSchema = z
  .array(z.object({ name: z.string(), path: z.string(), type: z.literal('file') }))
  .min(1, 'at least one written file')

/** What `/archive` wrote: entries (files, directories, links) and bytes of file content. */
export interface ArchiveUploadResult {
  entries: number
  bytes: number
}

const archiveUploadResultSchema = z.object({
  entries: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
})

export interface TransferOptions {
  /** Linux user the file is read or written as. @default the client's user */
  user?: string
  /** Aborts the transfer; there is no other deadline, so large files take what they need. */
  signal?: AbortSignal
}

export interface ArchiveUploadOptions {
  /**
   * Owner of everything written, missing parents included; a relative path is relative to this
   * user's home. @default the client's user
   */
  user?: string
  /**
   * Permission bits (e.g. `0o755`) for the archive's files and directories instead of those in
   * their headers; symlinks keep theirs.
   */
  mode?: number
  /** Aborts the upload; there is no other deadline. */
  signal?: AbortSignal
}

/** What the host hands a sandbox's agent once it is up (envd's `POST /init`). */
export interface AgentInit {
  envVars: Record<string, string>
  accessToken: string
  /** The token the agent holds now, when it has one (rotation needs it). */
  currentAccessToken?: string
  /** @default 'user' */
  defaultUser?: string
  /** Where commands and relative paths start; absent: the user's home. */
  defaultWorkdir?: string
}

export interface InitOptions {
  /** @default 5000 */
  timeoutMs?: number
  signal?: AbortSignal
}

/** `a=1&b=x%20y`, percent-encoded like the e2b SDK's client (a space is `%20`, not `+`). */
export function encodeQuery(query: Record<string, string | undefined>): string {
  return Object.entries(query)
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`)
    .join('&')
}

interface AgentRequest {
  method: 'GET' | 'POST'
  path: string
  query?: Record<string, string>
  headers: Record<string, string>
  body?: string | Uint8Array | Readable
  /** Names the file a `/files` request is about, for a precise 404. */
  filePath?: string
  /** The caller's signals: aborting one rejects with its reason. */
  signals: (AbortSignal | undefined)[]
  timeoutMs?: number
  /** The error for an answer that is not a success. @default errorFromResponse */
  refused?: (status: number, body: string, context: RequestContext) => SandcellError
}

interface AgentResponse {
  body: Dispatcher.ResponseData['body']
  context: RequestContext
  /** The error for a failure while reading the body (the same table as for the request). */
  failure(err: unknown): unknown
}

/** Sends a request; resolves on a 2xx answer. @throws SandcellError for anything else. */
async function send(route: HttpRoute, req: AgentRequest): Promise<AgentResponse> {
  const search = req.query === undefined ? '' : `?${encodeQuery(req.query)}`
  const context: RequestContext = {
    ...route.context,
    method: req.method,
    url: `${route.context.serverUrl}${req.path}${search}`,
    filePath: req.filePath,
  }
  const callers = req.signals.filter((signal): signal is AbortSignal => signal !== undefined)
  const deadline =
    req.timeoutMs === undefined
      ? undefined
      : { signal: AbortSignal.timeout(req.timeoutMs), timeoutMs: req.timeoutMs }
  const signals = deadline === undefined ? callers : [...callers, deadline.signal]
  const failure = (err: unknown): unknown => requestFailure(err, { callers, deadline, context })
  let response: Dispatcher.ResponseData
  try {
    response = await request(`${route.baseUrl}${req.path}${search}`, {
      method: req.method,
      headers: { ...route.headers, ...req.headers },
      body: req.body ?? null,
      dispatcher: route.dispatcher,
      signal: signals.length === 0 ? null : AbortSignal.any(signals),
    })
  } catch (err) {
    throw failure(err)
  }
  if (response.statusCode < 200 || response.statusCode > 299) {
    const text = await response.body.text().catch(() => '')
    throw (req.refused ?? errorFromResponse)(response.statusCode, text, context)
  }
  return { body: response.body, context, failure }
}

/** Upload data as undici takes it: bytes and text as they are, anything else as a stream. */
function bodyOf(data: UploadData): string | Uint8Array | Readable {
  return typeof data === 'string' || data instanceof Uint8Array ? data : Readable.from(data)
}

/** A success answer's JSON body. @throws the request's error table for a failed read. */
async function readJson(response: AgentResponse): Promise<unknown> {
  let text: string
  try {
    text = await response.body.text()
  } catch (err) {
    throw response.failure(err)
  }
  return parseJsonBody(text, response.context)
}

/** The request of a `/files` transfer of `path` as `user`. */
function filesRequest(
  path: string,
  user: string,
  signals: (AbortSignal | undefined)[],
): Pick<AgentRequest, 'path' | 'query' | 'headers' | 'filePath' | 'signals'> {
  if (path === '') {
    throw new InvalidArgumentError('a file path is required')
  }
  return {
    path: '/files',
    query: { path, username: user },
    headers: { authorization: basicAuthorization(user) },
    filePath: path,
    signals,
  }
}

/**
 * Writes a file (parents are created), streaming `data`.
 * @throws NotEnoughSpaceError when the sandbox's disk is full, PermissionDeniedError…
 */
export async function uploadFile(
  route: HttpRoute,
  path: string,
  data: UploadData,
  options: { user: string; signals: (AbortSignal | undefined)[] },
): Promise<UploadedFile> {
  const files = filesRequest(path, options.user, options.signals)
  const response = await send(route, {
    ...files,
    method: 'POST',
    headers: { ...files.headers, 'content-type': 'application/octet-stream' },
    body: bodyOf(data),
  })
  const parsed = uploadedFilesSchema.safeParse(await readJson(response))
  if (!parsed.success) {
    throw errorFromBadBody(parsed.error, response.context)
  }
  // One raw-body upload writes one file; the schema guarantees there is at least one.
  return parsed.data[0] as UploadedFile
}

/**
 * Extracts a tar archive (gzip-compressed or not) below the directory `path`, streaming `data`;
 * the directory and its missing parents are created.
 * @throws InvalidArgumentError for a bad mode, an unknown user or an entry the agent refuses
 *   (absolute, `..`, a device node, a hard link out of the archive…; earlier entries stay
 *   written), PermissionDeniedError, NotEnoughSpaceError when the sandbox's disk is full…
 */
export async function uploadArchive(
  route: HttpRoute,
  path: string,
  data: UploadData,
  options: { user: string; mode: number | undefined; signals: (AbortSignal | undefined)[] },
): Promise<ArchiveUploadResult> {
  if (path === '') {
    throw new InvalidArgumentError('a destination directory is required')
  }
  const { mode } = options
  if (mode !== undefined && !(Number.isInteger(mode) && mode >= 0 && mode <= 0o7777)) {
    throw new InvalidArgumentError(`mode must be permission bits from 0 to 0o7777, got ${mode}`)
  }
  const response = await send(route, {
    method: 'POST',
    path: '/archive',
    query: {
      path,
      username: options.user,
      ...(mode === undefined ? {} : { mode: mode.toString(8).padStart(4, '0') }),
    },
    headers: {
      authorization: basicAuthorization(options.user),
      'content-type': 'application/x-tar',
    },
    body: bodyOf(data),
    signals: options.signals,
  })
  const parsed = archiveUploadResultSchema.safeParse(await readJson(response))
  if (!parsed.success) {
    throw errorFromBadBody(parsed.error, response.context)
  }
  return parsed.data
}

/**
 * Reads a file as a stream of chunks.
 * @throws FileNotFoundError when it does not exist, InvalidArgumentError for a directory.
 */
export async function downloadFile(
  route: HttpRoute,
  path: string,
  options: { user: string; signals: (AbortSignal | undefined)[] },
): Promise<ReadableStream<Uint8Array>> {
  const response = await send(route, {
    ...filesRequest(path, options.user, options.signals),
    method: 'GET',
  })
  return Readable.toWeb(response.body) as ReadableStream<Uint8Array>
}

/** Whether the agent answers envd's `GET /health` in time; false on any failure or refusal. */
export async function checkHealth(
  route: HttpRoute,
  options: { timeoutMs: number; signal?: AbortSignal | undefined },
): Promise<boolean> {
  try {
    const response = await send(route, {
      method: 'GET',
      path: '/health',
      headers: {},
      signals: [options.signal],
      timeoutMs: options.timeoutMs,
    })
    await response.body.dump()
    return true
  } catch {
    // Not up yet, refusing, or gone: the caller polls again or gives up on its own deadline.
    return false
  }
}

/**
 * Hands the agent its env vars and access token (envd's `POST /init`).
 * @throws DriverError when the agent refuses (any refusal is the host's mistake) or cannot be
 *   reached, TimeoutError when it does not answer in time.
 */
export async function initAgent(
  route: HttpRoute,
  init: AgentInit,
  options: InitOptions = {},
): Promise<void> {
  const response = await send(route, {
    method: 'POST',
    path: '/init',
    headers: {
      'content-type': 'application/json',
      ...(init.currentAccessToken === undefined
        ? {}
        : { [envdHeaders.accessToken]: init.currentAccessToken }),
    },
    body: JSON.stringify({
      envVars: init.envVars,
      accessToken: init.accessToken,
      defaultUser: init.defaultUser ?? defaultUser,
      ...(init.defaultWorkdir === undefined ? {} : { defaultWorkdir: init.defaultWorkdir }),
    }),
    signals: [options.signal],
    timeoutMs: options.timeoutMs ?? 5000,
    refused: (status, body, context) =>
      new DriverError(`the agent refused /init (${status}): ${serverMessage(body)}`, {
        details: { status, method: context.method, url: context.url },
      }),
  })
  await response.body.dump()
}
