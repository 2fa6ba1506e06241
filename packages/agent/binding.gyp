{
  "targets": [
    {
      "target_name": "sandcell_spawn",
      "sources": ["native/addon.c", "native/fast_spawn.c", "native/xattr.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
