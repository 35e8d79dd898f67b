// The CPU GEMM. OpenBLAS is loaded at run time with dlopen, and the few CBLAS/OpenBLAS functions
// used are declared below, so neither building nor loading the addon needs OpenBLAS (or the
// libgfortran it brings): a machine without it runs the project's own kernel (own_gemm.cpp) instead,
// and capabilities().blas says which one runs and why.
//
//   LLAMA_ADAPTER_OPENBLAS=/path/libopenblas.so.0  the file to load (default: libopenblas.so.0 on the
//                                                  loader's path, then libopenblasp.so.0, libopenblas.so)
//   LLAMA_ADAPTER_CPU_GEMM=own                     never load it: the own kernel
//   LLAMA_ADAPTER_CPU_GEMM=openblas                require it: GEMMs fail with the reason when it is missing
//
// OpenBLAS reads OPENBLAS_CORETYPE and OPENBLAS_NUM_THREADS when it loads, which is at the first
// GEMM (or capabilities()), after lib/blas-env.ts has set them.
#include "blas.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "error.h"
#include "parallel.h"

namespace la {
namespace {

// ---- declarations of the CBLAS and OpenBLAS API used (cblas.h, openblas_config.h) --------------
// The enum values are CBLAS's (the same in every CBLAS); blasint is int in LP64 builds, which is
// what libopenblas.so.0 is (the ILP64 build is named libopenblas64.so.0 and is never loaded here).
constexpr int CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112;
using SgemmFn = void (*)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float* A,
                         int lda, const float* B, int ldb, float beta, float* C, int ldc);

struct Blas {
  SgemmFn sgemm = nullptr;          // null: the own kernel runs
  void (*set_num_threads)(int) = nullptr;  // openblas_set_num_threads: OpenBLAS only
  int (*get_num_threads)() = nullptr;      // openblas_get_num_threads
  std::string name;                 // what capabilities().blas reports
  std::string error;                // set: GEMMs fail with it (a required library is missing)
};

// "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21"
[[maybe_unused]] std::string openblas_version(const char* config) {
  std::string c = config ? config : "";
  size_t sp = c.find(' ');
  if (c.rfind("OpenBLAS ", 0) != 0 || sp == std::string::npos) return "OpenBLAS";
  size_t end = c.find(' ', sp + 1);
  return c.substr(0, end);
}

Blas load_blas() {
  Blas b;
#ifdef LA_BLAS_OFF
  b.name = "own kernels (built with LLAMA_ADAPTER_BLAS=OFF)";
  return b;
#else
  const char* mode_env = std::getenv("LLAMA_ADAPTER_CPU_GEMM");
  const std::string mode = mode_env ? mode_env : "";
  if (mode != "" && mode != "own" && mode != "openblas") {
    b.error = "LLAMA_ADAPTER_CPU_GEMM must be \"own\" or \"openblas\" (or unset), not \"" + mode + "\"";
    b.name = "none (" + b.error + ")";
    return b;
  }
  if (mode == "own") {
    b.name = "own kernels (LLAMA_ADAPTER_CPU_GEMM=own)";
    return b;
  }

  const char* named = std::getenv("LLAMA_ADAPTER_OPENBLAS");
  std::vector<std::string> names;
  if (named && *named) names = {named};  // a file named explicitly is the only one tried
  else names = {"libopenblas.so.0", "libopenblasp.so.0", "libopenblas.so"};
  void* lib = nullptr;
  std::string opened, tried;
  for (const std::string& name : names) {
    lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) {
      opened = name;
      break;
    }
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name + ": not found");
  }
  std::string why_not;
  if (!lib) {
    why_not = names[0] + " could not be loaded: " + tried +
              (named && *named ? "" : "; install OpenBLAS (apt-get install libopenblas0) or name the file with LLAMA_ADAPTER_OPENBLAS");
  } else {
    b.sgemm = reinterpret_cast<SgemmFn>(dlsym(lib, "cblas_sgemm"));
    if (!b.sgemm) why_not = opened + " has no cblas_sgemm (not a CBLAS library?)";
  }
  if (!b.sgemm) {
    if (lib) dlclose(lib);
    if (mode == "openblas") {
      b.error = "LLAMA_ADAPTER_CPU_GEMM=openblas, but " + why_not;
      b.name = "none (" + b.error + ")";
    } else {
      b.name = "own kernels (" + why_not + ")";
    }
    return b;
  }
  // optional: without them it is another CBLAS, which threads as it likes
  b.set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(lib, "openblas_set_num_threads"));
  b.get_num_threads = reinterpret_cast<int (*)()>(dlsym(lib, "openblas_get_num_threads"));
  auto get_config = reinterpret_cast<const char* (*)()>(dlsym(lib, "openblas_get_config"));
  auto get_corename = reinterpret_cast<const char* (*)()>(dlsym(lib, "openblas_get_corename"));
  // the file itself, for the report (dlopen may have searched for a bare name)
  Dl_info info;
  std::string path = dladdr(reinterpret_cast<void*>(b.sgemm), &info) && info.dli_fname ? info.dli_fname : opened;
  b.name = get_config ? openblas_version(get_config()) : "CBLAS";
  b.name += " (";
  if (get_corename) b.name += std::string(get_corename()) + " kernels; ";
  b.name += path + ", loaded at run time)";
  return b;
#endif
}

const Blas& blas() {
  static const Blas b = load_blas();
  return b;
}

// Threading. By default OpenBLAS runs single-threaded and a large sgemm is cut into one block of C
// per thread of our pool (along its longer side), each block one single-threaded sgemm call. With
// OpenBLAS's own threads, its idle workers spin (sched_yield) for a while after every call, and on
// a machine with as many cores as threads they took the cores from our pool's elementwise and
// attention kernels that run between the GEMMs. LLAMA_ADAPTER_GEMM_SPLIT=0 restores OpenBLAS's
// threading (m / n force the split dimension).
enum class Split { Off, Auto, Rows, Cols };

Split split_mode() {
  static const Split mode = [] {
    if (!blas().set_num_threads) return Split::Off;  // another CBLAS: its own threading, whatever it is
    const char* e = std::getenv("LLAMA_ADAPTER_GEMM_SPLIT");
    if (e && std::strcmp(e, "0") == 0) return Split::Off;
    if (e && std::strcmp(e, "m") == 0) return Split::Rows;
    if (e && std::strcmp(e, "n") == 0) return Split::Cols;
    return Split::Auto;
  }();
  return mode;
}

void blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { blas().set_num_threads(1); });
}

void call_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc) {
  blas().sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
               B, ldb, beta, C, ldc);
}

void blas_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc) {
  const Split mode = split_mode();
  if (mode == Split::Off) return call_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  blas_single_threaded();
  const int threads = num_threads();
  // below ~4 MFLOP a block per thread costs more in wake-ups than it gains
  if (threads == 1 || double(M) * N * K < double(1 << 21))
    return call_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const bool rows = mode == Split::Rows || (mode == Split::Auto && M >= N);
  const int64_t len = rows ? M : N;
  const int64_t unit = 16;  // block edges on multiples of the micro-kernel's tile
  const int64_t parts = std::min<int64_t>(threads, (len + unit - 1) / unit);
  const int64_t step = ((len + parts - 1) / parts + unit - 1) / unit * unit;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
      const int64_t b0 = p * step, b1 = std::min<int64_t>(len, b0 + step);
      if (b0 >= b1) continue;
      const int n = int(b1 - b0);
      if (rows)  // rows b0..b1 of C and of op(A)
        call_sgemm(ta, tb, n, N, K, alpha, ta ? A + b0 : A + b0 * lda, lda, B, ldb, beta, C + b0 * ldc, ldc);
      else  // columns b0..b1 of C and of op(B)
        call_sgemm(ta, tb, M, n, K, alpha, A, lda, tb ? B + b0 * ldb : B + b0, ldb, beta, C + b0, ldc);
    }
  });
}

}  // namespace

const char* blas_name() { return blas().name.c_str(); }

bool blas_available() { return blas().sgemm != nullptr; }

int blas_threads() { return blas().get_num_threads ? blas().get_num_threads() : 0; }

void blas_set_threads(int n) {
  if (blas().set_num_threads) blas().set_num_threads(split_mode() == Split::Off ? n : 1);
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
  const Blas& b = blas();
  LA_CHECK(b.error.empty(), b.error);
  if (b.sgemm) return blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  own_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace la
