/* Attention of a few queries per row over that row's first n keys: the decoder's step (one new token
 * per hypothesis, or the K hypotheses of one source against its encoder output). Loaded by
 * attnlab/layers/decode_kernel.py, which compiles it once per machine and falls back to PyTorch's
 * kernels when it cannot.
 *
 *   out[b, t, h, :] = sum_j softmax_j(scale * q[b, h, t, :] . k[b, h, j, :]) v[b, h, j, :],  j < n_b
 *
 * n_b = lengths[b] (the real source tokens of row b: padding is at the end of each row), or S when
 * lengths is NULL. A row with no key gets a zero output. q, k and v are read through strides
 * (in floats; the last dimension is contiguous), so the KV cache's (B, S, H, D) storage and the
 * (B, S, 2 d_model) encoder-decoder keys/values are used where they lie. Rows run in parallel on
 * PyTorch's OpenMP threads; within a row every key is read once, all heads together, with the
 * softmax computed online (one pass over keys and values, the running maximum rescaling the sums).
 * Why: PyTorch's fused CPU kernel spends most of its time per (row, head) pair when there is one
 * query, and reads the padding keys too.
 */
#include <math.h>
#include <stdint.h>

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
    float m[H], l[H]; /* running maximum and sum of exponentials, per head */
    for (int64_t t = 0; t < T; ++t) {
      float *o = out + (b * T + t) * H * D; /* (H, D): the concatenated heads of this query */
      for (int64_t i = 0; i < H * D; ++i) o[i] = 0.f;
      for (int64_t h = 0; h < H; ++h) {
        m[h] = -INFINITY;
        l[h] = 0.f;
      }
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t h = 0; h < H; ++h) {
          const float *qp = q + b * qb + h * qh + t * qt;
          const float *kp = k + b * kb + h * kh + j * ks;
          const float *vp = v + b * vb + h * vh + j * vs;
          float *oh = o + h * D;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < D; ++d) s += qp[d] * kp[d];
          s *= scale;
          if (s > m[h]) { /* a new maximum: rescale what is summed so far */
            float c = expf(m[h] - s);
            l[h] = l[h] * c + 1.f;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) oh[d] = oh[d] * c + vp[d];
            m[h] = s;
          } else {
            float p = expf(s - m[h]);
            l[h] += p;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) oh[d] += p * vp[d];
          }
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
        float *oh = o + h * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) oh[d] *= inv;
      }
    }
  }
}
