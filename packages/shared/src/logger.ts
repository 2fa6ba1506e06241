/** Structured logging: one pino root per program, narrowed with child loggers by component. */
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'

export type { Logger } from 'pino'

/** Fields that must never reach a log line. */
export const redactPaths = [
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers["x-access-token"]',
  'headers["x-api-key"]',
  '*.accessToken',
  'accessToken',
  'apiKey',
  '*.apiKey',
  'envs.*',
  '*.envs.*',
  'env.*',
  '*.env.*',
]

export interface CreateLoggerOptions {
  level?: LoggerOptions['level']
  name?: string
  /** Where lines go; defaults to stderr so stdout stays the program's own output. */
  destination?: DestinationStream
}

export function createLogger(options: CreateLoggerOptions = {}): Logger {
  const destination = options.destination ?? pino.destination({ fd: 2, sync: false })
  return pino(
    {
      level: options.level ?? 'info',
      ...(options.name === undefined ? {} : { name: options.name }),
      redact: { paths: redactPaths, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    destination,
  )
}

/** A logger that drops everything: for library callers that pass none. */
export function createSilentLogger(): Logger {
  return pino({ level: 'silent' })
}
