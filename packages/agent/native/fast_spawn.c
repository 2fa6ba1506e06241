// Process creation for the agent without fork(): libuv forks the whole Node process (page tables
// of ~60 MB) and blocks the event loop for 5-8 ms per command on small hosts. Here the child is
// made with clone(CLONE_VM | CLONE_VFORK), as posix_spawn does, so the parent pays only for the
// exec; exits are observed through a pidfd polled on the Node event loop.
//
// spawn(file, argv[], envp[], cwd, uid, gid, withStdin, onExit) ->
//   [pid, stdinFd (-1 without), stdoutFd, stderrFd] | -errno
// onExit(code, signal) is called once, from the event loop, after the child was reaped.
#define _GNU_SOURCE
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define CHILD_STACK_SIZE (64 * 1024)

struct child_args {
  const char *file;
  char **argv;
  char **envp;
  const char *cwd;
  int uid;
  int gid;
  int stdin_fd;  // child's end, or -1 for /dev/null
  int stdout_fd;
  int stderr_fd;
  int null_fd;
  int error_fd;  // CLOEXEC pipe: the child writes errno here when it cannot exec
  sigset_t mask; // the parent's mask, to restore in the child
};

// Runs in the child, sharing the parent's memory until execve: only async-signal-safe calls,
// credentials through raw syscalls (glibc's wrappers would broadcast to the parent's threads).
static int child_main(void *raw) {
  struct child_args *a = raw;
  int err = 0;
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) {
      continue;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
  }
  if (syscall(SYS_setsid) < 0) {
    err = errno;
    goto fail;
  }
  if (a->gid >= 0) {
    if (syscall(SYS_setgroups, 0, NULL) < 0 || syscall(SYS_setresgid, a->gid, a->gid, a->gid) < 0) {
      err = errno;
      goto fail;
    }
  }
  if (a->uid >= 0 && syscall(SYS_setresuid, a->uid, a->uid, a->uid) < 0) {
    err = errno;
    goto fail;
  }
  if (a->cwd != NULL && chdir(a->cwd) < 0) {
    err = errno;
    goto fail;
  }
  int in = a->stdin_fd >= 0 ? a->stdin_fd : a->null_fd;
  if (dup2(in, 0) < 0 || dup2(a->stdout_fd, 1) < 0 || dup2(a->stderr_fd, 2) < 0) {
    err = errno;
    goto fail;
  }
  sigset_t empty;
  sigemptyset(&empty);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof(unsigned long));
  execve(a->file, a->argv, a->envp);
  err = errno;
fail:
  while (write(a->error_fd, &err, sizeof err) < 0 && errno == EINTR) {
  }
  _exit(127);
}

struct exit_watch {
  uv_poll_t poll;
  int pidfd;
  pid_t pid;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
};

static void on_watch_closed(uv_handle_t *handle) {
  struct exit_watch *w = handle->data;
  free(w);
}

static void on_pidfd_readable(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  struct exit_watch *w = poll->data;
  siginfo_t info;
  memset(&info, 0, sizeof info);
  int rc;
  do {
    rc = waitid(P_PIDFD, (id_t)w->pidfd, &info, WEXITED | WNOHANG);
  } while (rc < 0 && errno == EINTR);
  if (rc == 0 && info.si_pid == 0) {
    return;  // spurious wake-up: not exited yet
  }
  uv_poll_stop(poll);
  close(w->pidfd);
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value callback, global, args[2];
  napi_get_reference_value(env, w->callback, &callback);
  napi_get_global(env, &global);
  if (rc == 0 && info.si_code == CLD_EXITED) {
    napi_create_int32(env, info.si_status, &args[0]);
    napi_get_null(env, &args[1]);
  } else {
    napi_get_null(env, &args[0]);
    napi_create_int32(env, rc == 0 ? info.si_status : SIGKILL, &args[1]);
  }
  napi_value result;
  napi_make_callback(env, w->context, global, callback, 2, args, &result);
  napi_delete_reference(env, w->callback);
  napi_async_destroy(env, w->context);
  napi_close_handle_scope(env, scope);
  uv_close((uv_handle_t *)poll, on_watch_closed);
}

static napi_value make_int(napi_env env, int64_t value) {
  napi_value out;
  napi_create_int64(env, value, &out);
  return out;
}

static char *copy_string(napi_env env, napi_value value) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) {
    return NULL;
  }
  char *out = malloc(len + 1);
  if (out != NULL) {
    napi_get_value_string_utf8(env, value, out, len + 1, &len);
  }
  return out;
}

// A NULL-terminated copy of a JS string array.
static char **copy_string_array(napi_env env, napi_value array) {
  uint32_t length = 0;
  if (napi_get_array_length(env, array, &length) != napi_ok) {
    return NULL;
  }
  char **out = calloc(length + 1, sizeof(char *));
  if (out == NULL) {
    return NULL;
  }
  for (uint32_t i = 0; i < length; i++) {
    napi_value item;
    napi_get_element(env, array, i, &item);
    out[i] = copy_string(env, item);
    if (out[i] == NULL) {
      for (uint32_t j = 0; j < i; j++) {
        free(out[j]);
      }
      free(out);
      return NULL;
    }
  }
  return out;
}

static void free_string_array(char **array) {
  if (array == NULL) {
    return;
  }
  for (char **p = array; *p != NULL; p++) {
    free(*p);
  }
  free(array);
}

static void close_if_open(int fd) {
  if (fd >= 0) {
    close(fd);
  }
}

static napi_value js_spawn(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 8;
  napi_value argv[8];
  napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL);
  if (argc < 8) {
    return make_int(env, -EINVAL);
  }
  char *file = copy_string(env, argv[0]);
  char **args = copy_string_array(env, argv[1]);
  char **envp = copy_string_array(env, argv[2]);
  char *cwd = copy_string(env, argv[3]);
  int32_t uid = -1, gid = -1;
  bool with_stdin = false;
  napi_get_value_int32(env, argv[4], &uid);
  napi_get_value_int32(env, argv[5], &gid);
  napi_get_value_bool(env, argv[6], &with_stdin);
  napi_value callback = argv[7];

  int result_err = 0;
  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, error_pipe[2] = {-1, -1};
  int null_fd = -1;
  void *stack = MAP_FAILED;
  pid_t pid = -1;
  if (file == NULL || args == NULL || envp == NULL || cwd == NULL) {
    result_err = ENOMEM;
    goto done;
  }
  if ((with_stdin && pipe2(in_pipe, O_CLOEXEC) < 0) || pipe2(out_pipe, O_CLOEXEC) < 0 ||
      pipe2(err_pipe, O_CLOEXEC) < 0 || pipe2(error_pipe, O_CLOEXEC) < 0 ||
      (null_fd = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0) {
    result_err = errno;
    goto done;
  }
  stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    result_err = errno;
    goto done;
  }
  struct child_args child = {
      .file = file,
      .argv = args,
      .envp = envp,
      .cwd = cwd[0] == '\0' ? NULL : cwd,
      .uid = uid,
      .gid = gid,
      .stdin_fd = in_pipe[0],
      .stdout_fd = out_pipe[1],
      .stderr_fd = err_pipe[1],
      .null_fd = null_fd,
      .error_fd = error_pipe[1],
  };
  // No signal handler of the parent may run in the child while they share memory.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &child.mask);
  pid = clone(child_main, (char *)stack + CHILD_STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, &child);
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &child.mask, NULL);
  if (pid < 0) {
    result_err = clone_err;
    goto done;
  }
  // CLONE_VFORK: we run again once the child has exec'd or exited. A failed exec left its errno.
  close(error_pipe[1]);
  error_pipe[1] = -1;
  int child_err = 0;
  ssize_t n;
  do {
    n = read(error_pipe[0], &child_err, sizeof child_err);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof child_err) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
    result_err = child_err;
    goto done;
  }
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) {
    result_err = errno;
    kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
    goto done;
  }
  struct exit_watch *watch = calloc(1, sizeof *watch);
  uv_loop_t *loop = NULL;
  napi_get_uv_event_loop(env, &loop);
  watch->pidfd = pidfd;
  watch->pid = pid;
  watch->env = env;
  napi_create_reference(env, callback, 1, &watch->callback);
  napi_value resource_name;
  napi_create_string_utf8(env, "sandcell.spawn", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, NULL, resource_name, &watch->context);
  uv_poll_init(loop, &watch->poll, pidfd);
  watch->poll.data = watch;
  uv_poll_start(&watch->poll, UV_READABLE, on_pidfd_readable);

done:
  close_if_open(in_pipe[0]);
  close_if_open(out_pipe[1]);
  close_if_open(err_pipe[1]);
  close_if_open(error_pipe[0]);
  close_if_open(error_pipe[1]);
  close_if_open(null_fd);
  if (stack != MAP_FAILED) {
    munmap(stack, CHILD_STACK_SIZE);
  }
  free(file);
  free(cwd);
  free_string_array(args);
  free_string_array(envp);
  if (result_err != 0) {
    close_if_open(in_pipe[1]);
    close_if_open(out_pipe[0]);
    close_if_open(err_pipe[0]);
    return make_int(env, -result_err);
  }
  napi_value out;
  napi_create_array_with_length(env, 4, &out);
  napi_set_element(env, out, 0, make_int(env, pid));
  napi_set_element(env, out, 1, make_int(env, in_pipe[1]));
  napi_set_element(env, out, 2, make_int(env, out_pipe[0]));
  napi_set_element(env, out, 3, make_int(env, err_pipe[0]));
  return out;
}

napi_status register_spawn(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"spawn", NULL, js_spawn, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, 1, props);
}
