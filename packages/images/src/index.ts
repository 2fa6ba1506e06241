/**
 * Every image sandcell builds: template root filesystems (base, debian) and the microVM guest's
 * kernel, initramfs, sandcell image and template images, on a shared core of build locks,
 * atomic build directories, a content-addressed artifact cache and ownership shifting.
 */
export type { TemplateProgress } from './core/progress.js'
export { ensureArtifact, hashParts, type ArtifactContext } from './core/artifact-cache.js'
export { resolveHostNode, type HostLibrary, type HostNode } from './core/host-node.js'
export { readJsonFile, writeJsonAtomic } from './core/json-file.js'
export { shiftOwnership } from './core/ownership.js'

export {
  TemplateRegistry,
  assertTemplateExists,
  templateNames,
  templateStatuses,
  type PreparedTemplate,
  type TemplateBuildContext,
  type TemplateStatus,
} from './templates/template-registry.js'
export {
  builtTemplatePath,
  isBuildId,
  listBuiltTemplates,
  readBuiltTemplate,
  templateDefaultsSchema,
  writeBuiltTemplate,
  type BuiltTemplate,
  type TemplateDefaults,
} from './templates/built-template.js'
export {
  buildBaseRootfs,
  baseBuilderVersion,
  type BaseRootfs,
  type BaseTemplateMetadata,
  type BuildBaseRootfsOptions,
} from './templates/base-rootfs.js'
export {
  buildDebianRootfs,
  debianBuilderVersion,
  defaultDebianPackages,
  type BuildDebianRootfsOptions,
  type DebianRootfs,
  type DebianTemplateMetadata,
} from './templates/debian/debian-rootfs.js'
export type {
  TemplateBuildPhase,
  TemplateBuildProgress,
} from './templates/debian/build-progress.js'

export type { BuildContext } from './guest/build-context.js'
export { ensureGuestBase, type GuestBase } from './guest/guest-base.js'
export type { GuestKernel } from './guest/kernel.js'
export {
  ensureTemplateImage,
  ensureTemplateRootfs,
  type TemplateImageSource,
  type TemplateRootfs,
  type TemplateRootfsSettings,
} from './guest/template-image.js'

export { imagesConfigSchema, hostPlatform, type ImagesConfig } from './oci/images-config.js'
export { parseImageReference, type ImageReference } from './oci/image-reference.js'
export type { ImageRunConfig } from './oci/manifest.js'
export type { RegistryCredentials } from './oci/registry-client.js'
export {
  ImageStore,
  type ImageStoreOptions,
  type PulledImage,
  type PullLogLine,
  type PullOptions,
} from './oci/image-store.js'
