// Loads the sandbox seccomp filter into real bubblewrap and checks what the kernel answers.
import assert from 'node:assert/strict'
import { execFile, spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, openSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { constants, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'

import {
  buildSeccompFilter,
  syscallTables,
  type SeccompArch,
} from '../src/drivers/container/seccomp/seccomp-filter.js'
import { deniedSyscalls, type SyscallName } from '../src/drivers/container/seccomp/syscalls.js'

const { EPERM, ENOSYS } = constants.errno
const RUN_TIMEOUT_MS = 30_000

/**
 * The probe: each line is "<name> <errno>", 0 meaning success. Risky calls get arguments that
 * are harmless even if the filter let them through (per-process keyrings, closed fds, -1 fds).
 * `probe raw NR...` calls each number as syscall(nr, -1, 0, 0, 0, 0, 0).
 */
const probeSource = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void report(const char *name, long result) {
  printf("%s %d\n", name, result < 0 ? errno : 0);
  fflush(stdout);
}

/* Closes an fd a probe got back, so a success leaves nothing open. */
static long closing(long fd) {
  if (fd >= 0) close((int)fd);
  return fd;
}

/* Runs fn in a child so it cannot change the probe; its exit code is 0 or an errno. */
static int in_child(int (*fn)(void)) {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) _exit(fn());
  int status;
  if (waitpid(pid, &status, 0) < 0) return errno;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void report_child(const char *name, int (*fn)(void)) {
  printf("%s %d\n", name, in_child(fn));
  fflush(stdout);
}

/* Ends the child of a raw clone at once and reaps it in the parent. */
static long reap(long pid) {
  if (pid == 0) _exit(0);
  if (pid > 0) waitpid((pid_t)pid, NULL, 0);
  return pid;
}

static void *thread_main(void *arg) {
  *(int *)arg = 42;
  return NULL;
}

static int run_thread(void) {
  int value = 0;
  pthread_t thread;
  int rc = pthread_create(&thread, NULL, thread_main, &value);
  if (rc != 0) return rc;
  if ((rc = pthread_join(thread, NULL)) != 0) return rc;
  return value == 42 ? 0 : EIO;
}

static int exit_seven(void) { return 7; }

static int run_fork(void) { return in_child(exit_seven) == 7 ? 0 : EIO; }

static int exec_true(void) {
  execl("/bin/true", "true", (char *)NULL);
  return errno;
}

static int read_file(void) {
  char magic[4];
  int fd = open("/usr/bin/true", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = read(fd, magic, sizeof magic);
  close(fd);
  return n == 4 && memcmp(magic, "\x7f" "ELF", 4) == 0 ? 0 : EIO;
}

static int unshare_newuser(void) {
  return syscall(SYS_unshare, CLONE_NEWUSER) < 0 ? errno : 0;
}

/* Opens a pty as a new session's controlling terminal, as a shell in a sandbox would. */
static int controlling_pty(void) {
  if (setsid() < 0) return -1;
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) return -1;
  const char *name = ptsname(master);
  return name == NULL ? -1 : open(name, O_RDWR);
}

static int tiocsti(void) {
  char c = 'x';
  int tty = controlling_pty();
  return tty < 0 ? errno : ioctl(tty, TIOCSTI, &c) < 0 ? errno : 0;
}

static int tiocsti_high_bits(void) {
  char c = 'x';
  int tty = controlling_pty();
  if (tty < 0) return errno;
  return syscall(SYS_ioctl, tty, (1UL << 32) | TIOCSTI, &c) < 0 ? errno : 0;
}

static int tioclinux(void) {
  char subcode = 7; /* TIOCL_GETSHIFTSTATE: read-only */
  int tty = controlling_pty();
  return tty < 0 ? errno : ioctl(tty, TIOCLINUX, &subcode) < 0 ? errno : 0;
}

static int tcgets(void) {
  struct termios t;
  int tty = controlling_pty();
  return tty < 0 ? errno : ioctl(tty, TCGETS, &t) < 0 ? errno : 0;
}

static void named(void) {
  char status[4096];
  int fd = open("/proc/self/status", O_RDONLY);
  ssize_t n = fd < 0 ? -1 : read(fd, status, sizeof status - 1);
  status[n < 0 ? 0 : n] = 0;
  const char *mode = strstr(status, "Seccomp:");
  printf("seccomp_mode %d\n", mode == NULL ? -1 : atoi(mode + 8));

  report_child("fork", run_fork);
  report_child("thread", run_thread);
  report_child("exec_true", exec_true);
  report_child("read_file", read_file);

  report("personality_query", personality(0xffffffff));
  report("personality_linux32", personality(PER_LINUX32));
  report("personality_no_aslr", personality(ADDR_NO_RANDOMIZE));
  report("personality_linux", personality(PER_LINUX));

  report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 1));
  report("add_key",
         syscall(SYS_add_key, "user", "sandcell-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
  report("request_key",
         syscall(SYS_request_key, "user", "sandcell-probe", NULL, KEY_SPEC_PROCESS_KEYRING));

  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_ARRAY;
  attr.key_size = 4;
  attr.value_size = 4;
  attr.max_entries = 1;
  report("bpf", closing(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr)));

  report("userfaultfd", closing(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));

  struct io_uring_params params;
  memset(&params, 0, sizeof params);
  report("io_uring_setup", closing(syscall(SYS_io_uring_setup, 4, &params)));
  report("io_uring_enter", syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0));
  report("io_uring_register", syscall(SYS_io_uring_register, -1, 0, NULL, 0));

  report("clone_newuser", reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
  report_child("unshare_newuser", unshare_newuser);
  struct clone_args args;
  memset(&args, 0, sizeof args);
  args.exit_signal = SIGCHLD;
  report("clone3", reap(syscall(SYS_clone3, &args, sizeof args)));

  report_child("tiocsti", tiocsti);
  report_child("tiocsti_high_bits", tiocsti_high_bits);
  report_child("tioclinux", tioclinux);
  report_child("tcgets", tcgets);

  struct perf_event_attr perf;
  memset(&perf, 0, sizeof perf);
  perf.type = PERF_TYPE_SOFTWARE;
  perf.size = sizeof perf;
  perf.config = PERF_COUNT_SW_TASK_CLOCK;
  perf.disabled = 1;
  perf.exclude_kernel = 1;
  perf.exclude_hv = 1;
  report("perf_event_open", closing(syscall(SYS_perf_event_open, &perf, 0, -1, -1, 0)));

  report("fsopen", closing(syscall(SYS_fsopen, "tmpfs", 0)));
  report("fsconfig", syscall(SYS_fsconfig, -1, 0, NULL, NULL, 0));
  report("open_tree", closing(syscall(SYS_open_tree, AT_FDCWD, "/", 0)));
  report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
  report("setns", syscall(SYS_setns, -1, 0));
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "raw") == 0) {
    for (int i = 2; i < argc; i++) {
      long nr = strtol(argv[i], NULL, 10);
      printf("%ld %d\n", nr, syscall(nr, -1L, 0L, 0L, 0L, 0L, 0L) < 0 ? errno : 0);
    }
    return 0;
  }
  named();
  return 0;
}
`

function isSeccompArch(arch: string): arch is SeccompArch {
  return arch === 'x64' || arch === 'arm64'
}

function hasCommand(command: string, args: string[]): boolean {
  return spawnSync(command, args, { stdio: 'ignore' }).error === undefined
}

function skipReason(): string | false {
  if (process.getuid?.() !== 0) {
    return 'needs root: bubblewrap gets full namespaces only as root here'
  }
  if (!isSeccompArch(process.arch)) {
    return `no seccomp filter for ${process.arch}`
  }
  if (!hasCommand('bwrap', ['--version'])) {
    return 'bubblewrap (bwrap) is not installed'
  }
  if (!hasCommand('gcc', ['--version'])) {
    return 'gcc is not installed; the probe is compiled at test time'
  }
  return false
}

function errnoName(errno: number | undefined): string {
  if (errno === undefined) {
    return 'missing'
  }
  if (errno === 0) {
    return 'ok'
  }
  return Object.entries(constants.errno).find(([, value]) => value === errno)?.[0] ?? `${errno}`
}

/** Parses the probe's "<name> <errno>" lines. */
function parse(stdout: string): Map<string, number> {
  const results = new Map<string, number>()
  for (const line of stdout.split('\n').filter(Boolean)) {
    const [name, errno] = line.split(' ')
    assert.ok(name !== undefined && errno !== undefined, `bad probe line ${JSON.stringify(line)}`)
    results.set(name, Number(errno))
  }
  return results
}

/** Runs the probe in bubblewrap; with `filterPath`, bwrap loads it from fd 3. */
async function runProbe(
  probeDir: string,
  args: string[],
  filterPath?: string,
): Promise<Map<string, number>> {
  // prettier-ignore
  const bwrapArgs = [
    '--unshare-all',
    '--die-with-parent',
    '--ro-bind', '/usr', '/usr',
    '--symlink', 'usr/lib64', '/lib64',
    '--symlink', 'usr/lib', '/lib',
    '--symlink', 'usr/bin', '/bin',
    '--proc', '/proc',
    '--dev', '/dev',
    '--tmpfs', '/tmp',
    '--ro-bind', probeDir, '/probe',
    ...(filterPath === undefined ? [] : ['--seccomp', '3']),
    '--', '/probe/probe', ...args,
  ]
  const filterFd = filterPath === undefined ? 'ignore' : openSync(filterPath, 'r')
  try {
    const child = spawn('bwrap', bwrapArgs, {
      stdio: ['ignore', 'pipe', 'pipe', filterFd],
      signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
    })
    // Typed nullable because fd 3 is not a pipe; 0-2 are set up just above.
    assert.ok(child.stdout !== null && child.stderr !== null, 'bwrap stdout and stderr are piped')
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null]
    assert.equal(code, 0, `bwrap ${bwrapArgs.join(' ')} ended with ${code ?? signal}: ${stderr}`)
    return parse(stdout)
  } finally {
    if (typeof filterFd === 'number') {
      closeSync(filterFd)
    }
  }
}

describe('container seccomp filter under bubblewrap', { skip: skipReason() }, () => {
  let dir: string | undefined
  let filterPath = ''
  let probeDir = ''
  let filtered = new Map<string, number>()
  let control = new Map<string, number>()

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sandcell-seccomp-'))
    probeDir = join(dir, 'probe')
    await writeFile(join(dir, 'probe.c'), probeSource)
    await mkdir(probeDir)
    const gccArgs = [
      '-O1',
      '-Wall',
      '-pthread',
      '-o',
      join(probeDir, 'probe'),
      join(dir, 'probe.c'),
    ]
    await promisify(execFile)('gcc', gccArgs)
    filterPath = join(dir, 'filter.bpf')
    await writeFile(filterPath, buildSeccompFilter())
    // The control run shows what the kernel alone says, so a denial can be told from a
    // missing capability; the filtered run is the one under test.
    control = await runProbe(probeDir, [])
    filtered = await runProbe(probeDir, [], filterPath)
  })

  after(async () => {
    if (dir !== undefined) {
      await rm(dir, { recursive: true, force: true })
    }
  })

  /** Asserts the filtered probe got `errno` for each name, showing the control result too. */
  function assertErrno(errno: number, names: string[]): void {
    for (const name of names) {
      assert.equal(
        errnoName(filtered.get(name)),
        errnoName(errno),
        `${name}: with filter ${errnoName(filtered.get(name))}, without ${errnoName(control.get(name))}`,
      )
    }
  }

  it('runs the sandboxed process under a seccomp filter', () => {
    assert.equal(filtered.get('seccomp_mode'), 2)
    assert.equal(control.get('seccomp_mode'), 0)
  })

  it('keeps fork, threads, execve and file reads working', () => {
    assertErrno(0, ['fork', 'thread', 'exec_true', 'read_file'])
  })

  it('allows the personalities Docker allows', () => {
    assertErrno(0, ['personality_query', 'personality_linux32', 'personality_linux'])
  })

  it('rejects a personality that turns off ASLR', () => {
    assertErrno(EPERM, ['personality_no_aslr'])
  })

  it('rejects keyctl, add_key and request_key', () => {
    assertErrno(EPERM, ['keyctl', 'add_key', 'request_key'])
  })

  it('rejects bpf', () => {
    assertErrno(EPERM, ['bpf'])
  })

  it('rejects userfaultfd', () => {
    assertErrno(EPERM, ['userfaultfd'])
  })

  it('rejects io_uring', () => {
    assertErrno(EPERM, ['io_uring_setup', 'io_uring_enter', 'io_uring_register'])
  })

  it('cannot create a user namespace with unshare or clone', () => {
    assertErrno(EPERM, ['unshare_newuser', 'clone_newuser'])
  })

  it('answers clone3 with ENOSYS so glibc falls back to clone', () => {
    assertErrno(ENOSYS, ['clone3'])
  })

  it('rejects TIOCSTI terminal injection, also with junk in the upper bits', () => {
    assertErrno(EPERM, ['tiocsti', 'tiocsti_high_bits'])
  })

  it('rejects TIOCLINUX but still allows TCGETS', () => {
    assertErrno(EPERM, ['tioclinux'])
    assertErrno(0, ['tcgets'])
  })

  it('rejects perf_event_open', () => {
    assertErrno(EPERM, ['perf_event_open'])
  })

  it('cannot mount via fsopen, open_tree or mount', () => {
    assertErrno(EPERM, ['fsopen', 'fsconfig', 'open_tree', 'mount'])
  })

  it('rejects setns', () => {
    assertErrno(EPERM, ['setns'])
  })

  it('denies in the filter, not through a missing capability', () => {
    // Without the filter these get a different answer (success, EBADF, EINVAL, ENOTTY…) on any
    // host, so the EPERM/ENOSYS the filtered run saw came from seccomp.
    const decisive = [
      'personality_no_aslr',
      'io_uring_enter',
      'io_uring_register',
      'clone3',
      'tioclinux',
      'fsconfig',
      'open_tree',
      'setns',
    ]
    for (const name of decisive) {
      assert.notEqual(
        control.get(name),
        filtered.get(name),
        `${name} is the same without the filter`,
      )
    }
  })

  it('rejects every denied syscall with EPERM', async () => {
    assert.ok(isSeccompArch(process.arch))
    const table = syscallTables[process.arch]
    const numbers = new Map<string, SyscallName>()
    for (const name of deniedSyscalls) {
      const number = table[name]
      if (number !== null) {
        numbers.set(String(number), name)
      }
    }
    const results = await runProbe(probeDir, ['raw', ...numbers.keys()], filterPath)
    for (const [number, name] of numbers) {
      assert.equal(errnoName(results.get(number)), 'EPERM', `${name} (${number})`)
    }
  })
})
