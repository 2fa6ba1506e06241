/**
 * Template builds: E2B's step lists (from an image or a template; RUN, COPY, ENV, WORKDIR,
 * USER; start and ready commands) run in build sandboxes into cached, shared overlay layers.
 */
export * from './build-request.js'
export * from './build-log.js'
export { builderVersion, hashKeys } from './cache-key.js'
export { LayerStore, type BuildState, type Layer } from './layer-store.js'
export {
  TemplateBuilder,
  asBuildError,
  type ImagePuller,
  type TemplateBuilderOptions,
} from './template-builder.js'
export { buildsConfigSchema, type BuildsConfig } from './builds-config.js'
