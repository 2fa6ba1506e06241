/**
 * OpenLambda-style functions: names, `ol.yaml`, and the untrusted code upload unpacked under
 * strict rules. (Issue 11; the registry, invocation, zygotes and the evictor build on these.)
 */
export * from './function-name.js'
export * from './function-config.js'
export * from './code-archive.js'
export * from './function-engine.js'
