/** A pass-through stream that shows every chunk to a callback first: for meters and limits. */
import { Transform } from 'node:stream'

/**
 * Passes every chunk on after `inspect` has seen it; a throw in `inspect` fails the stream
 * with that error (a size limit stops a pipeline there).
 */
export function tapChunks(inspect: (chunk: Buffer) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      try {
        inspect(chunk)
      } catch (err) {
        done(err instanceof Error ? err : new Error(String(err)))
        return
      }
      done(null, chunk)
    },
  })
}
