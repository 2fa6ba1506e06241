{
  "targets": [
    {
      "target_name": "sandcell_native",
      "sources": ["native/sandcell_native.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
