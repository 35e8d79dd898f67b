// x86-64 vector intrinsics for the SIMD bodies: where the compiler targets x86-64, LA_X86 is
// defined and <immintrin.h> included. The bodies pick their instruction set at run time (target
// attributes), so the build itself stays plain x86-64; other CPUs get the plain loops.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define LA_X86 1
#include <immintrin.h>
// GCC 12 warns of the deliberately undefined lanes inside its own AVX-512 intrinsics
// (_mm512_undefined_*), a false positive that later releases fixed.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif
