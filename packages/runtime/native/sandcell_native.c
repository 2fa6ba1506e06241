// Syscalls Node does not expose, kept off the sandbox create path as direct calls instead of
// spawning mount(8)/losetup(8)/cp(1) (each spawn costs 5-15 ms on small hosts).
// Every function returns 0 (or a result) on success and -errno on failure; the TypeScript
// wrapper turns negative values into errors, so no JS exceptions are built here.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_STR 4096

static napi_value make_int(napi_env env, int64_t value) {
  napi_value out;
  napi_create_int64(env, value, &out);
  return out;
}

// Reads argument `index` as a string into `buf`; a null/undefined argument gives NULL.
static const char *arg_string(napi_env env, napi_value *args, size_t argc, size_t index,
                              char *buf) {
  if (index >= argc) {
    return NULL;
  }
  napi_valuetype type;
  napi_typeof(env, args[index], &type);
  if (type != napi_string) {
    return NULL;
  }
  size_t len = 0;
  napi_get_value_string_utf8(env, args[index], buf, MAX_STR, &len);
  return buf;
}

static int64_t arg_int(napi_env env, napi_value *args, size_t argc, size_t index) {
  int64_t value = 0;
  if (index < argc) {
    napi_get_value_int64(env, args[index], &value);
  }
  return value;
}

// mount(source, target, fstype, flags, data) -> 0 | -errno
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value args[5];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  char source[MAX_STR], target[MAX_STR], fstype[MAX_STR], data[MAX_STR];
  const char *s = arg_string(env, args, argc, 0, source);
  const char *t = arg_string(env, args, argc, 1, target);
  const char *f = arg_string(env, args, argc, 2, fstype);
  unsigned long flags = (unsigned long)arg_int(env, args, argc, 3);
  const char *d = arg_string(env, args, argc, 4, data);
  if (t == NULL) {
    return make_int(env, -EINVAL);
  }
  return make_int(env, mount(s, t, f, flags, d) == 0 ? 0 : -errno);
}

// umount(target, flags) -> 0 | -errno
static napi_value js_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  char target[MAX_STR];
  const char *t = arg_string(env, args, argc, 0, target);
  if (t == NULL) {
    return make_int(env, -EINVAL);
  }
  return make_int(env, umount2(t, (int)arg_int(env, args, argc, 1)) == 0 ? 0 : -errno);
}

// loopAttach(path, readOnly) -> [device number, open fd of the device] | -errno. The device is
// set to autoclear, so it detaches itself on its last close; the caller keeps the returned fd
// open until the device is mounted, then closes it, and from then on the mount holds it.
static napi_value js_loop_attach(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  char path[MAX_STR];
  const char *p = arg_string(env, args, argc, 0, path);
  int read_only = (int)arg_int(env, args, argc, 1);
  if (p == NULL) {
    return make_int(env, -EINVAL);
  }
  int backing = open(p, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (backing < 0) {
    return make_int(env, -errno);
  }
  int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (control < 0) {
    int err = errno;
    close(backing);
    return make_int(env, -err);
  }
  // Another process may take the free device between GET_FREE and CONFIGURE: retry on EBUSY.
  for (int attempt = 0; attempt < 16; attempt++) {
    int number = ioctl(control, LOOP_CTL_GET_FREE);
    if (number < 0) {
      int err = errno;
      close(control);
      close(backing);
      return make_int(env, -err);
    }
    char device[64];
    snprintf(device, sizeof device, "/dev/loop%d", number);
    int loop = open(device, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (loop < 0) {
      int err = errno;
      close(control);
      close(backing);
      return make_int(env, -err);
    }
    struct loop_config config;
    memset(&config, 0, sizeof config);
    config.fd = (unsigned int)backing;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
    snprintf((char *)config.info.lo_file_name, LO_NAME_SIZE, "%s", p);
    int rc = ioctl(loop, LOOP_CONFIGURE, &config);
    int err = errno;
    if (rc == 0) {
      close(control);
      close(backing);
      napi_value pair;
      napi_create_array_with_length(env, 2, &pair);
      napi_set_element(env, pair, 0, make_int(env, number));
      napi_set_element(env, pair, 1, make_int(env, loop));
      return pair;
    }
    close(loop);
    if (err != EBUSY) {
      close(control);
      close(backing);
      return make_int(env, -err);
    }
  }
  close(control);
  close(backing);
  return make_int(env, -EBUSY);
}

// sparseCopy(src, dst) -> bytes of data copied | -errno. Copies only the data extents
// (SEEK_DATA/SEEK_HOLE) so a 1 GiB blank filesystem image with 1 MiB of metadata copies 1 MiB.
static napi_value js_sparse_copy(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  char src_path[MAX_STR], dst_path[MAX_STR];
  const char *s = arg_string(env, args, argc, 0, src_path);
  const char *d = arg_string(env, args, argc, 1, dst_path);
  if (s == NULL || d == NULL) {
    return make_int(env, -EINVAL);
  }
  int src = open(s, O_RDONLY | O_CLOEXEC);
  if (src < 0) {
    return make_int(env, -errno);
  }
  struct stat st;
  if (fstat(src, &st) != 0) {
    int err = errno;
    close(src);
    return make_int(env, -err);
  }
  int dst = open(d, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (dst < 0) {
    int err = errno;
    close(src);
    return make_int(env, -err);
  }
  int64_t copied = 0;
  int err = 0;
  if (ftruncate(dst, st.st_size) != 0) {
    err = errno;
  }
  off_t offset = 0;
  while (err == 0 && offset < st.st_size) {
    off_t data = lseek(src, offset, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) {
        err = errno;
      }
      break;
    }
    off_t hole = lseek(src, data, SEEK_HOLE);
    if (hole < 0) {
      err = errno;
      break;
    }
    loff_t in = data, out = data;
    size_t remaining = (size_t)(hole - data);
    while (remaining > 0) {
      ssize_t n = copy_file_range(src, &in, dst, &out, remaining, 0);
      if (n < 0) {
        err = errno;
        break;
      }
      if (n == 0) {
        break;
      }
      remaining -= (size_t)n;
      copied += n;
    }
    offset = hole;
  }
  close(src);
  if (close(dst) != 0 && err == 0) {
    err = errno;
  }
  if (err != 0) {
    unlink(d);
    return make_int(env, -err);
  }
  return make_int(env, copied);
}

// fsFreeze(mountPoint, freeze) -> 0 | -errno. FIFREEZE flushes and blocks writes to the
// filesystem so its image can be copied consistently; FITHAW lets writes go on.
static napi_value js_fs_freeze(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  char path[MAX_STR];
  const char *p = arg_string(env, args, argc, 0, path);
  int freeze = (int)arg_int(env, args, argc, 1);
  if (p == NULL) {
    return make_int(env, -EINVAL);
  }
  int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return make_int(env, -errno);
  }
  int rc = ioctl(fd, freeze ? FIFREEZE : FITHAW, 0);
  int err = errno;
  close(fd);
  return make_int(env, rc == 0 ? 0 : -err);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"umount", NULL, js_umount, NULL, NULL, NULL, napi_default, NULL},
      {"loopAttach", NULL, js_loop_attach, NULL, NULL, NULL, napi_default, NULL},
      {"sparseCopy", NULL, js_sparse_copy, NULL, NULL, NULL, napi_default, NULL},
      {"fsFreeze", NULL, js_fs_freeze, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
