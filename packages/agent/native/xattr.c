// Extended attributes for the agent's file metadata (envd keeps it as user.e2b.* xattrs), which
// Node has no API for. Only names in the user.* namespace are accepted: trusted.*, security.* and
// system.* names are refused with EPERM before any syscall, whatever the caller's privileges.
// A target is a path (the l*xattr calls: a final symlink is never followed) or an open fd.
//
// xattrList(target) -> names[] | -errno          names as latin1 strings (bytes kept exactly)
// xattrGet(target, name) -> Buffer | null | -errno  null when the attribute does not exist
// xattrSet(target, name, value: Buffer) -> 0 | -errno
// xattrRemove(target, name) -> 0 | -errno          removing a missing attribute is not an error
#define _GNU_SOURCE
#include "addon.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

// Linux's limits: a name (with its namespace) and one value; a whole name list.
#define NAME_MAX_BYTES 255
#define VALUE_MAX_BYTES 65536
#define LIST_MAX_BYTES 65536

struct target {
  int fd;  // -1 for a path
  char *path;
};

static napi_value make_int(napi_env env, int64_t value) {
  napi_value out;
  napi_create_int64(env, value, &out);
  return out;
}

// Reads a target argument; returns 0 or an errno.
static int read_target(napi_env env, napi_value value, struct target *out) {
  napi_valuetype type;
  napi_typeof(env, value, &type);
  if (type == napi_number) {
    int32_t fd = -1;
    napi_get_value_int32(env, value, &fd);
    if (fd < 0) {
      return EBADF;
    }
    out->fd = fd;
    return 0;
  }
  if (type != napi_string) {
    return EINVAL;
  }
  size_t len = 0;
  napi_get_value_string_utf8(env, value, NULL, 0, &len);
  out->path = malloc(len + 1);
  if (out->path == NULL) {
    return ENOMEM;
  }
  napi_get_value_string_utf8(env, value, out->path, len + 1, &len);
  if (strlen(out->path) != len) {
    return EINVAL;  // an embedded NUL would silently shorten the path
  }
  return 0;
}

// Reads a name argument (latin1: one byte per character) into buf; returns 0 or an errno.
static int read_name(napi_env env, napi_value value, char buf[NAME_MAX_BYTES + 1]) {
  size_t len = 0;
  if (napi_get_value_string_latin1(env, value, NULL, 0, &len) != napi_ok) {
    return EINVAL;
  }
  if (len == 0 || len > NAME_MAX_BYTES) {
    return ERANGE;
  }
  napi_get_value_string_latin1(env, value, buf, NAME_MAX_BYTES + 1, &len);
  if (strlen(buf) != len) {
    return EINVAL;
  }
  if (strncmp(buf, "user.", 5) != 0) {
    return EPERM;
  }
  return 0;
}

static ssize_t do_list(const struct target *t, char *buf, size_t size) {
  return t->fd >= 0 ? flistxattr(t->fd, buf, size) : llistxattr(t->path, buf, size);
}

static ssize_t do_get(const struct target *t, const char *name, void *buf, size_t size) {
  return t->fd >= 0 ? fgetxattr(t->fd, name, buf, size) : lgetxattr(t->path, name, buf, size);
}

// Reads the name list (name NULL) or one value, whose size is asked first: size, allocate, read,
// and again when it grew in between (ERANGE). Returns 0 with *out (the caller frees it; NULL when
// empty) and *size, or an errno.
static int read_sized(const struct target *t, const char *name, size_t max, char **out,
                      ssize_t *size) {
  *out = NULL;
  *size = 0;
  for (int attempt = 0; attempt < 4; attempt++) {
    ssize_t want = name == NULL ? do_list(t, NULL, 0) : do_get(t, name, NULL, 0);
    if (want <= 0) {
      return want < 0 ? errno : 0;
    }
    if ((size_t)want > max) {
      return E2BIG;
    }
    free(*out);
    *out = malloc((size_t)want);
    if (*out == NULL) {
      return ENOMEM;
    }
    *size = name == NULL ? do_list(t, *out, (size_t)want) : do_get(t, name, *out, (size_t)want);
    if (*size >= 0) {
      return 0;
    }
    if (errno != ERANGE) {
      return errno;
    }
  }
  return ERANGE;
}

// Reads the arguments every call starts with: the target, then (when name is not NULL) a name.
// Returns 0 or an errno; the caller frees t->path either way.
static int read_call(napi_env env, napi_callback_info info, size_t argc, napi_value *argv,
                     struct target *t, char name[NAME_MAX_BYTES + 1]) {
  size_t given = argc;
  napi_get_cb_info(env, info, &given, argv, NULL, NULL);
  t->fd = -1;
  t->path = NULL;
  if (given < argc) {
    return EINVAL;
  }
  int err = name == NULL ? 0 : read_name(env, argv[1], name);
  return err != 0 ? err : read_target(env, argv[0], t);
}

static napi_value js_xattr_list(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct target t;
  char *buf = NULL;
  ssize_t size = 0;
  int err = read_call(env, info, 1, argv, &t, NULL);
  if (err == 0) {
    err = read_sized(&t, NULL, LIST_MAX_BYTES, &buf, &size);
  }
  free(t.path);
  if (err != 0) {
    free(buf);
    return make_int(env, -err);
  }
  napi_value out;
  napi_create_array(env, &out);
  uint32_t index = 0;
  for (ssize_t start = 0; start < size;) {
    size_t len = strnlen(buf + start, (size_t)(size - start));
    napi_value name;
    napi_create_string_latin1(env, buf + start, len, &name);
    napi_set_element(env, out, index++, name);
    start += (ssize_t)len + 1;
  }
  free(buf);
  return out;
}

static napi_value js_xattr_get(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct target t;
  char name[NAME_MAX_BYTES + 1];
  char *buf = NULL;
  ssize_t size = 0;
  int err = read_call(env, info, 2, argv, &t, name);
  if (err == 0) {
    err = read_sized(&t, name, VALUE_MAX_BYTES, &buf, &size);
  }
  free(t.path);
  napi_value out;
  if (err == ENODATA) {
    napi_get_null(env, &out);
  } else if (err != 0) {
    out = make_int(env, -err);
  } else {
    napi_create_buffer_copy(env, (size_t)size, size > 0 ? buf : "", NULL, &out);
  }
  free(buf);
  return out;
}

static napi_value js_xattr_set(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct target t;
  char name[NAME_MAX_BYTES + 1];
  int err = read_call(env, info, 3, argv, &t, name);
  void *data = NULL;
  size_t length = 0;
  if (err == 0) {
    bool is_buffer = false;
    napi_is_buffer(env, argv[2], &is_buffer);
    if (!is_buffer) {
      err = EINVAL;
    } else {
      napi_get_buffer_info(env, argv[2], &data, &length);
      err = length > VALUE_MAX_BYTES ? E2BIG : 0;
    }
  }
  if (err == 0) {
    int rc = t.fd >= 0 ? fsetxattr(t.fd, name, data, length, 0)
                       : lsetxattr(t.path, name, data, length, 0);
    err = rc < 0 ? errno : 0;
  }
  free(t.path);
  return make_int(env, -err);
}

static napi_value js_xattr_remove(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct target t;
  char name[NAME_MAX_BYTES + 1];
  int err = read_call(env, info, 2, argv, &t, name);
  if (err == 0) {
    int rc = t.fd >= 0 ? fremovexattr(t.fd, name) : lremovexattr(t.path, name);
    err = rc < 0 && errno != ENODATA ? errno : 0;
  }
  free(t.path);
  return make_int(env, -err);
}

napi_status register_xattr(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"xattrList", NULL, js_xattr_list, NULL, NULL, NULL, napi_default, NULL},
      {"xattrGet", NULL, js_xattr_get, NULL, NULL, NULL, napi_default, NULL},
      {"xattrSet", NULL, js_xattr_set, NULL, NULL, NULL, napi_default, NULL},
      {"xattrRemove", NULL, js_xattr_remove, NULL, NULL, NULL, napi_default, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
