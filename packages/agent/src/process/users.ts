/** Users and groups of the sandbox, read from `<root>/etc/passwd` and `<root>/etc/group`. */
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { InvalidArgumentError } from '@sandcell/shared'

/** A sandbox user as a process or file operation runs as it. */
export interface SandboxUser {
  name: string
  uid: number
  gid: number
  /** Home directory, a sandbox path. */
  home: string
  /** Login shell, a sandbox path; `/bin/sh` when the entry leaves it empty. */
  shell: string
}

/** Parses passwd(5) text; malformed lines are skipped, the first entry of a name wins. */
export function parsePasswd(text: string): Map<string, SandboxUser> {
  const users = new Map<string, SandboxUser>()
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) {
      continue
    }
    const fields = line.split(':')
    if (fields.length < 7) {
      continue
    }
    const [name, , uidText, gidText, , home, shell] = fields as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ]
    const uid = parseId(uidText)
    const gid = parseId(gidText)
    if (name === '' || uid === undefined || gid === undefined || users.has(name)) {
      continue
    }
    users.set(name, { name, uid, gid, home: home === '' ? '/' : home, shell: shell || '/bin/sh' })
  }
  return users
}

/** Parses group(5) text into gid → name; the first entry of a gid wins. */
export function parseGroup(text: string): Map<number, string> {
  const groups = new Map<number, string>()
  for (const line of text.split('\n')) {
    const fields = line.split(':')
    if (fields.length < 3 || line.startsWith('#')) {
      continue
    }
    const gid = parseId(fields[2] as string)
    const name = fields[0] as string
    if (name !== '' && gid !== undefined && !groups.has(gid)) {
      groups.set(gid, name)
    }
  }
  return groups
}

function parseId(text: string): number | undefined {
  if (!/^\d{1,10}$/.test(text)) {
    return undefined
  }
  const id = Number(text)
  return id <= 0xffffffff ? id : undefined
}

/** Looks users and groups up, re-reading the files when they change (`useradd` in a sandbox). */
export interface UserDirectory {
  /**
   * The user with this name.
   * @throws InvalidArgumentError naming the user when it does not exist.
   */
  lookup(name: string): SandboxUser
  /** The name of a uid, or the uid as a string when no entry has it (like `ls`). */
  userName(uid: number): string
  /** The name of a gid, or the gid as a string when no entry has it. */
  groupName(gid: number): string
}

interface CachedFile<T> {
  key: string
  value: T
}

/** A user directory over `<root>/etc/passwd` and `<root>/etc/group`. */
export function createUserDirectory(root: string): UserDirectory {
  const passwdPath = join(root, 'etc/passwd')
  const groupPath = join(root, 'etc/group')
  let passwd:
    CachedFile<{ byName: Map<string, SandboxUser>; byUid: Map<number, string> }> | undefined
  let group: CachedFile<Map<number, string>> | undefined

  // One stat per lookup keeps the answer current; the files are tiny, so re-reading on change is cheap.
  const fileKey = (path: string): string => {
    try {
      const stat = statSync(path, { bigint: true })
      return `${stat.ino}:${stat.size}:${stat.mtimeNs}`
    } catch {
      return 'missing'
    }
  }
  const readText = (path: string): string => {
    try {
      return readFileSync(path, 'utf8')
    } catch {
      return ''
    }
  }
  const users = () => {
    const key = fileKey(passwdPath)
    if (passwd?.key !== key) {
      const byName = parsePasswd(readText(passwdPath))
      const byUid = new Map<number, string>()
      for (const user of byName.values()) {
        if (!byUid.has(user.uid)) {
          byUid.set(user.uid, user.name)
        }
      }
      passwd = { key, value: { byName, byUid } }
    }
    return passwd.value
  }
  const groups = () => {
    const key = fileKey(groupPath)
    if (group?.key !== key) {
      group = { key, value: parseGroup(readText(groupPath)) }
    }
    return group.value
  }

  return {
    lookup(name) {
      const user = users().byName.get(name)
      if (user === undefined) {
        throw new InvalidArgumentError(
          `user ${JSON.stringify(name)} does not exist in the sandbox`,
          {
            details: { user: name },
          },
        )
      }
      return user
    },
    userName: (uid) => users().byUid.get(uid) ?? String(uid),
    groupName: (gid) => groups().get(gid) ?? String(gid),
  }
}
