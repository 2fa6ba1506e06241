/** The test registry fixture: a real registry process, layer tars and a push client. */
export * from './test-registry.js'
export * from './token-server.js'
export * from './layer-tar.js'
export * from './push-image.js'
export * from './busybox-image.js'
