/* The decoder step's small operations on the CPU: attention of a few queries per row over that row's
 * first n keys, the same with the new token's key and value written into the KV cache first, and the
 * residual add & layer norm. Loaded by attnlab/layers/decode_kernel.py, which compiles it once per
 * machine (attnlab/layers/cpu_kernels.py) and falls back to PyTorch's kernels when it cannot.
 *
 *   out[b, t, h, :] = sum_j softmax_j(scale * q[b, h, t, :] . k[b, h, j, :]) v[b, h, j, :],  j < n_b
 *
 * n_b = lengths[b] (the real source tokens of row b: padding is at the end of each row), or S when
 * lengths is NULL. A row with no key gets a zero output. q, k and v are read through strides
 * (in floats; the last dimension is contiguous), so the KV cache's (B, S, H, D) storage and the
 * (B, S, 2 d_model) encoder-decoder keys/values are used where they lie. Rows run in parallel on
 * PyTorch's OpenMP threads. Per (row, query, head): the n scores (four keys at a time), their
 * exponentials (eight at a time), then the weighted sum of the values (attnlab/layers/simd.h).
 * Why: PyTorch's fused CPU kernel spends most of its time per (row, head) pair when there is one
 * query, and reads the padding keys too; at a decoder step every one of these operations is small
 * enough that PyTorch's per-call cost is a large part of it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

static inline float hsum8(v8 a) {
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

/* scores[j] = scale * q . k_j for j < n (k_j = k + j * ks) */
static void scores_of(float *scores, const float *q, const float *k, int64_t ks, int64_t n, int64_t D, float scale) {
  const int64_t D8 = D - D % 8;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float *k0 = k + j * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    v8 a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < D8; d += 8) {
      const v8 x = load8(q + d);
      a0 += x * load8(k0 + d);
      a1 += x * load8(k1 + d);
      a2 += x * load8(k2 + d);
      a3 += x * load8(k3 + d);
    }
    float s0 = hsum8(a0), s1 = hsum8(a1), s2 = hsum8(a2), s3 = hsum8(a3);
    for (int64_t d = D8; d < D; ++d) {
      s0 += q[d] * k0[d];
      s1 += q[d] * k1[d];
      s2 += q[d] * k2[d];
      s3 += q[d] * k3[d];
    }
    scores[j] = s0 * scale;
    scores[j + 1] = s1 * scale;
    scores[j + 2] = s2 * scale;
    scores[j + 3] = s3 * scale;
  }
  for (; j < n; ++j) {
    const float *kj = k + j * ks;
    v8 a = splat(0.f);
    for (int64_t d = 0; d < D8; d += 8) a += load8(q + d) * load8(kj + d);
    float s = hsum8(a);
    for (int64_t d = D8; d < D; ++d) s += q[d] * kj[d];
    scores[j] = s * scale;
  }
}

/* o[0..D) = attention of one query q over keys k_j, values v_j (j < n); p: scratch of n floats */
static void attend(float *o, const float *q, const float *k, int64_t ks, const float *v, int64_t vs, int64_t n,
                   int64_t D, float scale, float *p) {
  if (n <= 0) {
    memset(o, 0, (size_t)D * sizeof(float));
    return;
  }
  scores_of(p, q, k, ks, n, D, scale);
  const float inv = 1.f / exponentials(p, n, 1.f);
  for (int64_t j = 0; j < n; ++j) p[j] *= inv;
  combine(o, D, p, 1, v, vs, n);
}

#define STACK_KEYS 512

void attnlab_decode_attention(const float *q, int64_t qb, int64_t qh, int64_t qt,
                              const float *k, int64_t kb, int64_t kh, int64_t ks,
                              const float *v, int64_t vb, int64_t vh, int64_t vs,
                              const int64_t *lengths, int64_t S,
                              float *out, int64_t B, int64_t H, int64_t T, int64_t D, float scale) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = lengths ? lengths[b] : S;
    if (n > S) n = S;
    if (n < 0) n = 0;
    float stack[STACK_KEYS];
    float *p = n <= STACK_KEYS ? stack : malloc((size_t)n * sizeof(float));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        attend(out + ((b * T + t) * H + h) * D, q + b * qb + h * qh + t * qt, k + b * kb + h * kh, ks,
               v + b * vb + h * vh, vs, n, D, scale, p);
    if (p != stack) free(p);
  }
}

/* Self-attention of the newest token of each row over the KV cache. qkv: (B, 3 H D) rows of stride qkv_row,
 * [q | k | v]; the cache: k_cache and v_cache (B, capacity, H, D), row stride cache_row. The new key and
 * value are written at position pos, then each head's query attends to positions 0..pos. out: (B, H D). */
void attnlab_cache_attention(const float *qkv, int64_t qkv_row, float *k_cache, float *v_cache, int64_t cache_row,
                             int64_t pos, float *out, int64_t B, int64_t H, int64_t D, float scale) {
  const int64_t width = H * D, n = pos + 1;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const float *row = qkv + b * qkv_row;
    float *kc = k_cache + b * cache_row, *vc = v_cache + b * cache_row;
    memcpy(kc + pos * width, row + width, (size_t)width * sizeof(float));
    memcpy(vc + pos * width, row + 2 * width, (size_t)width * sizeof(float));
    float stack[STACK_KEYS];
    float *p = n <= STACK_KEYS ? stack : malloc((size_t)n * sizeof(float));
    for (int64_t h = 0; h < H; ++h)
      attend(out + b * width + h * D, row + h * D, kc + h * D, width, vc + h * D, width, n, D, scale, p);
    if (p != stack) free(p);
  }
}

/* Add & norm of N rows of D floats: s = x + y, norm_out = (s - mean(s)) / sqrt(var(s) + eps) * w + bias
 * (w, bias: NULL for none). sum_out, when not NULL, receives s (it may be x: the pre-norm residual stream
 * updated in place); norm_out may be x too. */
void attnlab_add_layer_norm(const float *x, const float *y, const float *w, const float *bias, float eps,
                            float *sum_out, float *norm_out, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static) if (N * D >= 16384)
  for (int64_t r = 0; r < N; ++r) {
    const float *xr = x + r * D, *yr = y + r * D;
    float *o = norm_out + r * D, *so = sum_out ? sum_out + r * D : NULL;
    const int64_t D8 = D - D % 8;
    v8 acc = splat(0.f);
    for (int64_t d = 0; d < D8; d += 8) {
      const v8 s = load8(xr + d) + load8(yr + d);
      store8(o + d, s);
      if (so) store8(so + d, s);
      acc += s;
    }
    float total = hsum8(acc);
    for (int64_t d = D8; d < D; ++d) {
      const float s = xr[d] + yr[d];
      o[d] = s;
      if (so) so[d] = s;
      total += s;
    }
    const float mean = total / (float)D;
    v8 sq = splat(0.f);
    for (int64_t d = 0; d < D8; d += 8) {
      const v8 c = load8(o + d) - mean;
      sq += c * c;
    }
    float var = hsum8(sq);
    for (int64_t d = D8; d < D; ++d) var += (o[d] - mean) * (o[d] - mean);
    const float rstd = 1.f / sqrtf(var / (float)D + eps);
    for (int64_t d = 0; d < D; ++d) {
      float c = (o[d] - mean) * rstd;
      if (w) c *= w[d];
      if (bias) c += bias[d];
      o[d] = c;
    }
  }
}
