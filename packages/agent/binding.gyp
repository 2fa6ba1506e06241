{
  "targets": [
    {
      "target_name": "sandcell_spawn",
      "sources": ["native/fast_spawn.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
