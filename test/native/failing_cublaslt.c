/* A library with cuBLASLt's entry points that fails on purpose, for test/emulator-runtime.test.ts:
 * the CUDA emulator build loads it through LLAMA_ADAPTER_CUBLASLT, so the engine choice of
 * native/cuda/matmul.cu (a failure switches to our kernel, or is an error when cuBLASLt is forced)
 * runs on the CPU. It computes nothing: every matmul it is asked for fails.
 *
 *   FAILING_CUBLASLT_AT   "create" (cublasLtCreate fails) or "matmul" (the default: plans are
 *                         made, cublasLtMatmul fails with CUBLAS_STATUS_EXECUTION_FAILED = 13)
 *   FAILING_CUBLASLT_LOG  a file to append "align <attribute> <bytes>" lines to, one per alignment
 *                         preference the caller sets (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A..D = 5..8)
 *
 * Built by the test: cc -shared -fPIC -o libcublasLt-failing.so failing_cublaslt.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fails_at(const char* what) {
  const char* e = getenv("FAILING_CUBLASLT_AT");
  return strcmp(e && *e ? e : "matmul", what) == 0;
}

static int handle_token, desc_token;

int cublasLtCreate(void** handle) {
  if (fails_at("create")) return 1; /* CUBLAS_STATUS_NOT_INITIALIZED */
  *handle = &handle_token;
  return 0;
}
size_t cublasLtGetVersion(void) { return 130002; }
int cublasLtMatmulDescCreate(void** desc, int compute, int scale) {
  (void)compute, (void)scale;
  *desc = &desc_token;
  return 0;
}
int cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* v, size_t n) {
  (void)desc, (void)attr, (void)v, (void)n;
  return 0;
}
int cublasLtMatmulDescDestroy(void* desc) {
  (void)desc;
  return 0;
}
int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  (void)type, (void)rows, (void)cols, (void)ld;
  *layout = &desc_token;
  return 0;
}
int cublasLtMatrixLayoutDestroy(void* layout) {
  (void)layout;
  return 0;
}
int cublasLtMatmulPreferenceCreate(void** pref) {
  *pref = &desc_token;
  return 0;
}
int cublasLtMatmulPreferenceSetAttribute(void* pref, int attr, const void* v, size_t n) {
  (void)pref;
  const char* log = getenv("FAILING_CUBLASLT_LOG");
  if (log && attr >= 5 && attr <= 8 && n == sizeof(uint32_t)) {
    FILE* f = fopen(log, "a");
    if (f) {
      fprintf(f, "align %d %u\n", attr, *(const uint32_t*)v);
      fclose(f);
    }
  }
  return 0;
}
int cublasLtMatmulPreferenceDestroy(void* pref) {
  (void)pref;
  return 0;
}
/* one result: a zeroed algo, no workspace, state success (cublasLtMatmulHeuristicResult_t: 96 bytes) */
int cublasLtMatmulAlgoGetHeuristic(void* h, void* d, void* a, void* b, void* c, void* dd, void* pref, int want,
                                   void* results, int* count) {
  (void)h, (void)d, (void)a, (void)b, (void)c, (void)dd, (void)pref, (void)want;
  memset(results, 0, 96);
  *count = 1;
  return 0;
}
int cublasLtMatmul(void* h, void* desc, const void* alpha, const void* A, void* la, const void* B, void* lb,
                   const void* beta, const void* C, void* lc, void* D, void* ld, const void* algo, void* ws,
                   size_t ws_bytes, void* stream) {
  (void)h, (void)desc, (void)alpha, (void)A, (void)la, (void)B, (void)lb, (void)beta, (void)C, (void)lc, (void)D,
      (void)ld, (void)algo, (void)ws, (void)ws_bytes, (void)stream;
  return 13; /* CUBLAS_STATUS_EXECUTION_FAILED */
}
