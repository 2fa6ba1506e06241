/**
 * A template build as E2B's SDK asks for it (`TemplateBuildStartV2`): where it starts, the step
 * list, and the start and ready commands. The server validates requests with these schemas; the
 * builder runs what they describe.
 */
import * as z from 'zod'

/** Step kinds the builder runs; others (E2B-only helpers) are refused with their name. */
export const stepTypes = ['RUN', 'COPY', 'ENV', 'WORKDIR', 'USER'] as const

export type StepType = (typeof stepTypes)[number]

/** A `filesHash`: the SDK's SHA-256 over a COPY step's files (opaque to the server). */
export const filesHashPattern = /^[0-9a-f]{64}$/

export const templateStepSchema = z.looseObject({
  type: z.string().min(1),
  args: z.array(z.string()).default([]),
  force: z.boolean().optional(),
  filesHash: z.string().regex(filesHashPattern, 'must be 64 lower-case hex digits').optional(),
})

export type TemplateStep = z.infer<typeof templateStepSchema>

export const registryCredentialsSchema = z.looseObject({
  type: z.string(),
  username: z.string().optional(),
  password: z.string().optional(),
})

export const buildStartSchema = z.looseObject({
  fromImage: z.string().min(1).optional(),
  fromTemplate: z.string().min(1).optional(),
  fromImageRegistry: registryCredentialsSchema.optional(),
  startCmd: z.string().optional(),
  readyCmd: z.string().optional(),
  force: z.boolean().default(false),
  steps: z.array(templateStepSchema).max(1000).default([]),
})

export type BuildStart = z.infer<typeof buildStartSchema>

/** What a build starts from, resolved by the server (names to builds, credentials checked). */
export type BuildBase =
  | {
      kind: 'image'
      reference: string
      credentials?: { username: string; password: string }
    }
  | {
      kind: 'template'
      /** A built-in template name or the build id of a finished build. */
      name: string
    }

/** Everything one build needs, as the builder takes it. */
export interface BuildPlan {
  buildId: string
  templateId: string
  base: BuildBase
  steps: readonly TemplateStep[]
  startCmd?: string
  readyCmd?: string
  /** Skip every cache lookup. */
  force: boolean
  /** Limits of the build sandboxes. */
  memoryMiB: number
  cpus: number
  diskMiB: number
}
