/** The network lab's TLS: a CA of its own and a leaf certificate for every lab name. */
import { join } from 'node:path'
import { labCertificateNames } from './network-lab-facts.js'
import { run } from './network-lab-topology.js'

/** Writes the lab's CA and a leaf certificate for {@link labCertificateNames} signed by it. */
export async function makeCertificates(
  dir: string,
): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  const files = {
    caFile: join(dir, 'ca.pem'),
    certFile: join(dir, 'cert.pem'),
    keyFile: join(dir, 'key.pem'),
  }
  const caKey = join(dir, 'ca-key.pem')
  const newCertificate = (cn: string, keyFile: string, certFile: string): string[] => {
    const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    const out = ['-keyout', keyFile, '-out', certFile]
    return ['req', '-x509', ...key, ...out, '-days', '2', '-subj', `/CN=${cn}`]
  }
  await run('openssl', newCertificate('network lab CA', caKey, files.caFile))
  // A leaf signed by the CA, not a self-signed certificate serving as its own CA: strict
  // clients (webpki, as in rustls) refuse a CA certificate as a server's.
  const sans = labCertificateNames.map((name) => `DNS:${name}`).join(',')
  await run('openssl', [
    ...newCertificate('example.com', files.keyFile, files.certFile),
    ...['-CA', files.caFile, '-CAkey', caKey],
    ...['-addext', `subjectAltName=${sans}`],
    ...['-addext', 'basicConstraints=critical,CA:FALSE'],
    ...['-addext', 'extendedKeyUsage=serverAuth'],
  ])
  return files
}
