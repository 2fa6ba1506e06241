// Stands in for node:assert inside the agent bundle: sonic-boom (pino's writer) only calls
// assert(value, message), and loading node:assert costs ~13 ms of every sandbox's start.
'use strict'
module.exports = function assert(value, message) {
  if (!value) {
    throw new Error(message ?? 'assertion failed')
  }
}
