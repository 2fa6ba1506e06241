export * from './leaks.js'
export * from './drivers.js'
export * from './serve.js'
export * from './wait.js'
