/* fma_peak.c - this machine's fp32 FMA peak, at its widest vectors.
 *
 *   cc -O2 -march=native -ffp-contract=fast -pthread bench/fma_peak.c -o fma_peak
 *   ./fma_peak [THREADS] [SECONDS] [bf16]
 *
 * Each thread runs chains of independent vector FMAs (acc = acc * a + b on
 * 16 accumulators, enough to cover the FMA latency times the number of FMA
 * pipes on current x86-64 cores) for about SECONDS (default 0.5) and counts
 * 2 FLOPs per lane per FMA. The vector width is the widest the compiler
 * targets with -march=native (64 bytes with AVX-512, 32 with AVX2); the
 * program prints it. Prints one line:
 *   fma_peak: T threads, W-byte vectors, G GFLOP/s
 * Used by bench/moe_layer.py to state speeds as a share of the peak.
 *
 * With `bf16` (on a CPU with AVX512-BF16, compiled with -march=native) the
 * chains are vdpbf16ps instead (acc += a.even * b.even + a.odd * b.odd: 4
 * FLOPs per 32-bit lane), the peak of moec's --precision=bf16 GEMMs:
 *   fma_peak: T threads, 64-byte vectors, bf16 dot products, G GFLOP/s
 * Without AVX512-BF16 it says so and exits 3.
 */
#include <immintrin.h>
#include <pthread.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
#define LANES (VBYTES / 4)
typedef float vf __attribute__((vector_size(VBYTES)));

#define NACC 16
#define INNER 1024

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

struct job {
  double budget;
  double flops;
  double elapsed;
  float sink;
};

#define FMA(x) x = x * a + b
#define STEP()                                                                 \
  do {                                                                         \
    FMA(c0); FMA(c1); FMA(c2); FMA(c3); FMA(c4); FMA(c5); FMA(c6); FMA(c7);    \
    FMA(c8); FMA(c9); FMA(c10); FMA(c11); FMA(c12); FMA(c13); FMA(c14);        \
    FMA(c15);                                                                  \
  } while (0)

static void *run(void *arg) {
  struct job *j = arg;
  vf a, b, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14,
      c15;
  for (int l = 0; l < LANES; ++l) {
    a[l] = 0.999999f;
    b[l] = 1e-7f;
    c0[l] = c1[l] = c2[l] = c3[l] = c4[l] = c5[l] = c6[l] = c7[l] = (float)l;
    c8[l] = c9[l] = c10[l] = c11[l] = c12[l] = c13[l] = c14[l] = c15[l] =
        (float)(l + 1);
  }
  double start = seconds(), now = start;
  long rounds = 0;
  while (now - start < j->budget) {
    /* a and b are opaque to the compiler, so it cannot fold the chains;
       the 16 accumulators stay in registers. */
    __asm__ volatile("" : "+x"(a), "+x"(b));
    for (int k = 0; k < INNER; ++k)
      STEP();
    ++rounds;
    now = seconds();
  }
  j->elapsed = now - start;
  j->flops = (double)rounds * INNER * NACC * LANES * 2.0;
  vf s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 +
         c13 + c14 + c15;
  float total = 0;
  for (int l = 0; l < LANES; ++l)
    total += s[l];
  j->sink = total;
  return NULL;
}

#if defined(__AVX512BF16__)
#define DOT(x) x = _mm512_dpbf16_ps(x, a, b)
static void *run_bf16(void *arg) {
  struct job *j = arg;
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80); /* (1.0, 1.0) */
  __m512bh b = (__m512bh)_mm512_set1_epi32(0x33d633d6); /* (1e-7, 1e-7) */
  /* Distinct starting values, hidden from the compiler: identical chains
     would be merged into one. */
  __m512 c0 = _mm512_set1_ps(0), c1 = _mm512_set1_ps(1),
         c2 = _mm512_set1_ps(2), c3 = _mm512_set1_ps(3),
         c4 = _mm512_set1_ps(4), c5 = _mm512_set1_ps(5),
         c6 = _mm512_set1_ps(6), c7 = _mm512_set1_ps(7),
         c8 = _mm512_set1_ps(8), c9 = _mm512_set1_ps(9),
         c10 = _mm512_set1_ps(10), c11 = _mm512_set1_ps(11),
         c12 = _mm512_set1_ps(12), c13 = _mm512_set1_ps(13),
         c14 = _mm512_set1_ps(14), c15 = _mm512_set1_ps(15);
  __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4),
                   "+v"(c5), "+v"(c6), "+v"(c7));
  __asm__ volatile("" : "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11), "+v"(c12),
                   "+v"(c13), "+v"(c14), "+v"(c15));
  double start = seconds(), now = start;
  long rounds = 0;
  while (now - start < j->budget) {
    __asm__ volatile("" : "+v"(a), "+v"(b));
    for (int k = 0; k < INNER; ++k) {
      DOT(c0); DOT(c1); DOT(c2); DOT(c3); DOT(c4); DOT(c5); DOT(c6); DOT(c7);
      DOT(c8); DOT(c9); DOT(c10); DOT(c11); DOT(c12); DOT(c13); DOT(c14);
      DOT(c15);
    }
    ++rounds;
    now = seconds();
  }
  j->elapsed = now - start;
  j->flops = (double)rounds * INNER * NACC * 16 * 4.0;
  __m512 s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 +
             c12 + c13 + c14 + c15;
  j->sink = _mm512_reduce_add_ps(s);
  return NULL;
}
#endif

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double budget = argc > 2 ? atof(argv[2]) : 0.5;
  int bf16 = argc > 3 && strcmp(argv[3], "bf16") == 0;
  if (threads < 1 || threads > 1024 || !(budget > 0 && budget < 600) ||
      (argc > 3 && !bf16)) {
    fprintf(stderr, "usage: fma_peak [THREADS 1..1024] [SECONDS] [bf16]\n");
    return 2;
  }
  void *(*body)(void *) = run;
  if (bf16) {
#if defined(__AVX512BF16__)
    body = run_bf16;
#else
    fprintf(stderr, "fma_peak: this CPU (or -march) has no AVX512-BF16\n");
    return 3;
#endif
  }
  pthread_t *tid = calloc(threads, sizeof *tid);
  struct job *jobs = calloc(threads, sizeof *jobs);
  if (!tid || !jobs)
    return 1;
  for (int t = 0; t < threads; ++t) {
    jobs[t].budget = budget;
    if (pthread_create(&tid[t], NULL, body, &jobs[t]) != 0) {
      fprintf(stderr, "fma_peak: cannot start thread %d\n", t);
      return 1;
    }
  }
  double flops = 0, longest = 0, sink = 0;
  for (int t = 0; t < threads; ++t) {
    pthread_join(tid[t], NULL);
    flops += jobs[t].flops;
    if (jobs[t].elapsed > longest)
      longest = jobs[t].elapsed;
    sink += jobs[t].sink;
  }
  printf("fma_peak: %d threads, %d-byte vectors, %s%.1f GFLOP/s%s\n", threads,
         VBYTES, bf16 ? "bf16 dot products, " : "", flops / longest * 1e-9,
         sink == 12345.0 ? " " : "");
  free(tid);
  free(jobs);
  return 0;
}
