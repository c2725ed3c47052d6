/* Multi-head attention of packed rows, forward and backward (CPU training and the encoder of a decode).
 * Loaded by attnlab/layers/packed_attention.py through attnlab/layers/cpu_kernels.py, which compiles it
 * once per machine; PyTorch's batched matmuls are used where it cannot be had.
 *
 * The real tokens of B sentences lie as rows, sentence after sentence: sentence b's queries are rows
 * q_start[b] .. q_start[b] + q_len[b] - 1 of q (row stride q_stride floats), its keys and values rows
 * k_start[b] .. + k_len[b] - 1 of k and v (row stride kv_stride); head h is the D floats at h * D of a
 * row. For each (sentence, head), each query i attends to the sentence's keys j < k_len[b] (and j <= i
 * when causal):
 *
 *   out[i, h] = sum_j P_ij v_j,   P_i = softmax_j(scale * q_i . k_j)
 *
 * P is written to probs (per sentence, per head, a q_len x k_len row-major block at
 * p_offset[b] + h * q_len * k_len; zeros where masked) for backward, which computes
 *
 *   dP_ij = dout_i . v_j,  dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij') scale,
 *   dq_i = sum_j dS_ij k_j,  dk_j = sum_i dS_ij q_i,  dv_j = sum_i P_ij dout_i
 *
 * straight into the gradients' rows (same layouts as q, k, v). The (sentence, head) pairs run in
 * parallel on PyTorch's OpenMP threads. Why: PyTorch needs the rows scattered into a padded head-major
 * layout, a batched matmul per group of sentences, a masked softmax and a gather back, each a pass over
 * memory; here there is no padding and no copy of the activations.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }

/* out[0..D) = sum_{r < count} coef[r * cstride] * rows[r * rstride + 0..D) */
static void combine(float *out, int64_t D, const float *coef, int64_t cstride, const float *rows, int64_t rstride,
                    int64_t count) {
  int64_t c = 0;
  for (; c + 32 <= D; c += 32) {
    v8 a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t r = 0; r < count; ++r) {
      const v8 w = splat(coef[r * cstride]);
      const float *x = rows + r * rstride + c;
      a0 += w * load8(x);
      a1 += w * load8(x + 8);
      a2 += w * load8(x + 16);
      a3 += w * load8(x + 24);
    }
    store8(out + c, a0);
    store8(out + c + 8, a1);
    store8(out + c + 16, a2);
    store8(out + c + 24, a3);
  }
  for (; c + 8 <= D; c += 8) {
    v8 a = splat(0.f);
    for (int64_t r = 0; r < count; ++r) a += splat(coef[r * cstride]) * load8(rows + r * rstride + c);
    store8(out + c, a);
  }
  for (; c < D; ++c) {
    float a = 0.f;
    for (int64_t r = 0; r < count; ++r) a += coef[r * cstride] * rows[r * rstride + c];
    out[c] = a;
  }
}

/* out[j] = a . b_j for the first 8 * blocks columns of bt (D x Sp, column j = b_j) */
static void dots(float *out, const float *a, int64_t D, const float *bt, int64_t Sp, int64_t blocks) {
  int64_t jb = 0;
  for (; jb + 4 <= blocks; jb += 4) {
    v8 a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < D; ++d) {
      const v8 w = splat(a[d]);
      const float *row = bt + d * Sp + 8 * jb;
      a0 += w * load8(row);
      a1 += w * load8(row + 8);
      a2 += w * load8(row + 16);
      a3 += w * load8(row + 24);
    }
    store8(out + 8 * jb, a0);
    store8(out + 8 * jb + 8, a1);
    store8(out + 8 * jb + 16, a2);
    store8(out + 8 * jb + 24, a3);
  }
  for (; jb < blocks; ++jb) {
    v8 acc = splat(0.f);
    for (int64_t d = 0; d < D; ++d) acc += splat(a[d]) * load8(bt + d * Sp + 8 * jb);
    store8(out + 8 * jb, acc);
  }
}

/* bt (D x Sp) = the D floats of rows 0..S-1 (stride rstride) as columns, zeros in columns S..Sp-1 */
static void transpose_in(float *bt, const float *rows, int64_t rstride, int64_t S, int64_t Sp, int64_t D) {
  for (int64_t d = 0; d < D; ++d) memset(bt + d * Sp + S, 0, (size_t)(Sp - S) * sizeof(float));
  for (int64_t j = 0; j < S; ++j)
    for (int64_t d = 0; d < D; ++d) bt[d * Sp + j] = rows[j * rstride + d];
}

void attnlab_packed_attention_forward(const float *q, int64_t q_stride, const float *k, const float *v,
                                      int64_t kv_stride, const int64_t *q_start, const int64_t *q_len,
                                      const int64_t *k_start, const int64_t *k_len, const int64_t *p_offset,
                                      int64_t B, int64_t H, int64_t D, int causal, float scale, float *out,
                                      int64_t out_stride, float *probs) {
#pragma omp parallel for schedule(dynamic, 2)
  for (int64_t task = 0; task < B * H; ++task) {
    const int64_t b = task / H, h = task % H, T = q_len[b], S = k_len[b];
    if (T <= 0) continue;
    const int64_t Sp = (S + 7) / 8 * 8;
    float *kt = malloc((size_t)(D * Sp + Sp) * sizeof(float) + 32);
    float *row = kt + D * Sp;
    transpose_in(kt, k + k_start[b] * kv_stride + h * D, kv_stride, S, Sp, D);
    float *P = probs + p_offset[b] + h * T * S;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t n = causal ? (i + 1 < S ? i + 1 : S) : S;
      float *o = out + (q_start[b] + i) * out_stride + h * D;
      float *p = P + i * S;
      if (n <= 0) {
        memset(o, 0, (size_t)D * sizeof(float));
        memset(p, 0, (size_t)S * sizeof(float));
        continue;
      }
      dots(row, q + (q_start[b] + i) * q_stride + h * D, D, kt, Sp, (n + 7) / 8);
      float m = -INFINITY;
      for (int64_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        p[j] = expf((row[j] - m) * scale);
        sum += p[j];
      }
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < n; ++j) p[j] *= inv;
      for (int64_t j = n; j < S; ++j) p[j] = 0.f;
      combine(o, D, p, 1, v + k_start[b] * kv_stride + h * D, kv_stride, n);
    }
    free(kt);
  }
}

void attnlab_packed_attention_backward(const float *q, int64_t q_stride, const float *k, const float *v,
                                       int64_t kv_stride, const int64_t *q_start, const int64_t *q_len,
                                       const int64_t *k_start, const int64_t *k_len, const int64_t *p_offset,
                                       int64_t B, int64_t H, int64_t D, int causal, float scale, const float *probs,
                                       const float *dout, int64_t dout_stride, float *dq, int64_t dq_stride,
                                       float *dk, float *dv, int64_t dkv_stride) {
#pragma omp parallel for schedule(dynamic, 2)
  for (int64_t task = 0; task < B * H; ++task) {
    const int64_t b = task / H, h = task % H, T = q_len[b], S = k_len[b];
    const int64_t Sp = (S + 7) / 8 * 8;
    const float *kb = k + k_start[b] * kv_stride + h * D, *vb = v + k_start[b] * kv_stride + h * D;
    const float *qb = q + q_start[b] * q_stride + h * D, *gb = dout + q_start[b] * dout_stride + h * D;
    float *dkb = dk + k_start[b] * dkv_stride + h * D, *dvb = dv + k_start[b] * dkv_stride + h * D;
    if (T <= 0) { /* no query: the keys and values get no gradient */
      for (int64_t j = 0; j < S; ++j) {
        memset(dkb + j * dkv_stride, 0, (size_t)D * sizeof(float));
        memset(dvb + j * dkv_stride, 0, (size_t)D * sizeof(float));
      }
      continue;
    }
    float *vt = malloc((size_t)(D * Sp + T * Sp) * sizeof(float) + 32);
    float *ds = vt + D * Sp; /* T x Sp */
    transpose_in(vt, vb, kv_stride, S, Sp, D);
    const float *P = probs + p_offset[b] + h * T * S;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t n = causal ? (i + 1 < S ? i + 1 : S) : S;
      float *dsi = ds + i * Sp;
      const float *p = P + i * S;
      if (n > 0) dots(dsi, gb + i * dout_stride, D, vt, Sp, (n + 7) / 8); /* dP */
      float dot = 0.f;
      for (int64_t j = 0; j < n; ++j) dot += p[j] * dsi[j];
      for (int64_t j = 0; j < n; ++j) dsi[j] = p[j] * (dsi[j] - dot) * scale;
      for (int64_t j = n; j < Sp; ++j) dsi[j] = 0.f;
      combine(dq + (q_start[b] + i) * dq_stride + h * D, D, dsi, 1, kb, kv_stride, n);
    }
    for (int64_t j = 0; j < S; ++j) {
      const int64_t i0 = causal ? (j < T ? j : T) : 0; /* causal: only queries i >= j saw key j */
      combine(dkb + j * dkv_stride, D, ds + i0 * Sp + j, Sp, qb + i0 * q_stride, q_stride, T - i0);
      combine(dvb + j * dkv_stride, D, P + i0 * S + j, S, gb + i0 * dout_stride, dout_stride, T - i0);
    }
    free(vt);
  }
}
