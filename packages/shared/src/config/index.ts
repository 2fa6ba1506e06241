export * from './load.js'
