/** The Firecracker release whose API, flags and errors the shim reproduces. */
export const firecrackerVersion = '1.16.1'
