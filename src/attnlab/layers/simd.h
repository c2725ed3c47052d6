/* What attnlab's C kernels share (included by packed_attention.c and decode_step.c; the kernel cache key
 * covers this file too, attnlab/layers/cpu_kernels.py): 8-float vectors, the softmax's e^x, and weighted
 * sums of rows. */
#ifndef ATTNLAB_SIMD_H
#define ATTNLAB_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* e^x for x <= 0 (the softmax's shifted scores), Cephes' expf: x = k ln 2 + r, |r| <= ln 2 / 2, a degree-6
 * polynomial for e^r, 2^k through the exponent bits; within 2 ulp of expf, 0 below -87, NaN for NaN */
static inline __m256 exp8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x); /* NaN stays NaN */
  __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}
#endif

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }

/* out[0..8 U) = sum_{r < count} coef[r * cstride] * rows[r * rstride + 0..8 U), in U independent sums
 * (U is a constant where it is inlined: the sums stay in registers) */
static inline void combine_chunk(float *out, const float *coef, int64_t cstride, const float *rows, int64_t rstride,
                                 int64_t count, const int U) {
  v8 a[8];
  for (int u = 0; u < U; ++u) a[u] = splat(0.f);
  for (int64_t r = 0; r < count; ++r) {
    const v8 w = splat(coef[r * cstride]);
    const float *x = rows + r * rstride;
    for (int u = 0; u < U; ++u) a[u] += w * load8(x + 8 * u);
  }
  for (int u = 0; u < U; ++u) store8(out + 8 * u, a[u]);
}

/* out[0..D) = sum_{r < count} coef[r * cstride] * rows[r * rstride + 0..D); chunks of 64 floats in eight
 * independent sums (FMA latency, not the loads, would bound fewer) */
static inline void combine(float *out, int64_t D, const float *coef, int64_t cstride, const float *rows, int64_t rstride,
                    int64_t count) {
  int64_t c = 0;
  for (; c + 64 <= D; c += 64) combine_chunk(out + c, coef, cstride, rows + c, rstride, count, 8);
  for (; c + 32 <= D; c += 32) combine_chunk(out + c, coef, cstride, rows + c, rstride, count, 4);
  for (; c + 8 <= D; c += 8) combine_chunk(out + c, coef, cstride, rows + c, rstride, count, 1);
  for (; c < D; ++c) {
    float a = 0.f;
    for (int64_t r = 0; r < count; ++r) a += coef[r * cstride] * rows[r * rstride + c];
    out[c] = a;
  }
}

/* p[j] = e^(scale * (p[j] - max_j p[j])) in place for j < n (scale > 0: the softmax's numerators); returns
 * their sum */
static inline float exponentials(float *p, int64_t n, float scale) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = p[j] > m ? p[j] : m;
  float sum = 0.f;
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(scale);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p + j), vm), vs));
    _mm256_storeu_ps(p + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (int i = 0; i < 8; ++i) sum += lanes[i];
#endif
  for (; j < n; ++j) {
    p[j] = expf((p[j] - m) * scale);
    sum += p[j];
  }
  return sum;
}

#endif
