/** envd's `/files` route: GET downloads, POST uploads, both as the `username` query's user. */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError } from '@sandcell/shared'
import type { AgentContext } from '../agent-context.js'
import type { FileOperationContext } from '../filesystem/file-operations.js'
import { requirePath } from '../filesystem/user-paths.js'
import { resolveRequestUser } from '../request-user.js'
import { sendFile } from './download.js'
import { authorizeFileAccess } from './signature.js'
import { receiveUpload } from './upload.js'

/**
 * Serves GET and POST `/files`. Authorization is the access token header or a signed URL (see
 * signature.ts); the server's general token check lets `/files` through to here.
 * @throws SandcellError for the caller to send in envd's error shape.
 */
export async function handleFiles(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  context: AgentContext,
): Promise<void> {
  const operation = req.method === 'POST' ? 'write' : 'read'
  const tokenHeader = req.headers['x-access-token']
  authorizeFileAccess({
    accessToken: context.state.accessToken,
    tokenHeader: Array.isArray(tokenHeader) ? tokenHeader[0] : tokenHeader,
    query: url.searchParams,
    operation,
  })
  const username = url.searchParams.get('username')
  const user = resolveRequestUser(
    context,
    username === null || username === '' ? undefined : username,
  )
  const ops: FileOperationContext = {
    root: context.root,
    users: context.users,
    creds: { uid: user.uid, gid: user.gid },
  }
  const queryPath = url.searchParams.get('path') ?? undefined
  if (operation === 'read') {
    const path = requirePath('path', queryPath ?? '', user, context.state.defaultWorkdir)
    await sendFile(req, res, ops, path)
    return
  }
  if (queryPath !== undefined && queryPath.includes('\0')) {
    throw new InvalidArgumentError('path contains a NUL byte')
  }
  await receiveUpload(req, res, {
    ops,
    user,
    defaultWorkdir: context.state.defaultWorkdir,
    queryPath: queryPath === '' ? undefined : queryPath,
  })
}
