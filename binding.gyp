{
  "targets": [
    {
      "target_name": "llama_adapter",
      "sources": ["<!@(node scripts/gyp-config.js sources)"],
      "include_dirs": ["<!@(node scripts/gyp-config.js includes)"],
      "defines": ["<!@(node scripts/gyp-config.js defines)"],
      "libraries": ["<!@(node scripts/gyp-config.js libraries)"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"],
      "conditions": [
        ["OS=='linux'", {
          "ldflags": ["-static-libstdc++", "-Wl,--exclude-libs,ALL", "-Wl,--gc-sections"]
        }]
      ],
      "xcode_settings": { "GCC_ENABLE_CPP_EXCEPTIONS": "YES", "CLANG_CXX_LANGUAGE_STANDARD": "c++17" }
    }
  ]
}
