{
  "targets": [{
    "target_name": "fuse",
    "include_dirs": [
      "<!(node -p \"require('path').dirname(require.resolve('napi-macros/napi-macros.h'))\")"
    ],
    "cflags": [
      "<!@(pkg-config --cflags fuse)",
      "-g",
      "-O2",
      "-Wall"
    ],
    "libraries": [
      "<!@(pkg-config --libs fuse)"
    ],
    "sources": [
      "fuse-native.c"
    ]
  }]
}
