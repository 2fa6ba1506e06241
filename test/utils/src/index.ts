export * from './leaks.js'
export * from './drivers.js'
