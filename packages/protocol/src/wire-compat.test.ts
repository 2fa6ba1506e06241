/**
 * Our envd descriptors against the ones the official e2b SDK embeds: every service, method,
 * message, field number, type and label the SDK knows must be identical in ours.
 */
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { describe, it } from 'node:test'
import { fromBinary } from '@bufbuild/protobuf'
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt'
import { file_filesystem_filesystem } from './gen/filesystem/filesystem_pb.js'
import { file_process_process } from './gen/process/process_pb.js'

function sdkDescriptors(): Map<string, FileDescriptorProto> {
  const require = createRequire(import.meta.url)
  const bundle = readFileSync(require.resolve('e2b').replace(/index\.js$/, 'index.mjs'), 'utf8')
  const found = new Map<string, FileDescriptorProto>()
  for (const match of bundle.matchAll(/fileDesc\("([A-Za-z0-9+/=]+)"/g)) {
    const proto = fromBinary(FileDescriptorProtoSchema, Buffer.from(match[1] as string, 'base64'))
    found.set(proto.name, proto)
  }
  return found
}

/** Flattens a descriptor into comparable lines: one per field and one per method. */
function signature(proto: FileDescriptorProto): string[] {
  const lines: string[] = [`package ${proto.package}`]
  const walk = (prefix: string, messages: FileDescriptorProto['messageType']): void => {
    for (const message of messages) {
      const name = `${prefix}${message.name}`
      for (const field of message.field) {
        lines.push(
          `${name}.${field.name} = ${field.number} ${field.type} ${field.label} ${field.typeName} oneof:${field.oneofIndex ?? '-'}`,
        )
      }
      walk(`${name}.`, message.nestedType)
    }
  }
  walk('', proto.messageType)
  for (const enumType of proto.enumType) {
    for (const value of enumType.value) {
      lines.push(`enum ${enumType.name}.${value.name} = ${value.number}`)
    }
  }
  for (const service of proto.service) {
    for (const method of service.method) {
      lines.push(
        `rpc ${service.name}.${method.name}(${method.inputType}) ${method.clientStreaming ? 'stream ' : ''}-> ${method.serverStreaming ? 'stream ' : ''}${method.outputType}`,
      )
    }
  }
  return lines.sort()
}

describe('envd wire compatibility with the e2b SDK', () => {
  const sdk = sdkDescriptors()
  const ours = [file_process_process.proto, file_filesystem_filesystem.proto]

  it('finds both envd descriptors in the SDK', () => {
    assert.deepEqual([...sdk.keys()].sort(), [
      'filesystem/filesystem.proto',
      'process/process.proto',
    ])
  })

  for (const proto of ours) {
    it(`matches the SDK's ${proto.name} field for field`, () => {
      const theirs = sdk.get(proto.name)
      assert.ok(theirs !== undefined, `the SDK has ${proto.name}`)
      const ourLines = signature(proto)
      const missing = signature(theirs).filter((line) => !ourLines.includes(line))
      assert.deepEqual(missing, [], 'everything the SDK sends or expects is in ours, identical')
    })
  }
})
