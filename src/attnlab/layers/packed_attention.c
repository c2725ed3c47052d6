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

#include "simd.h"

/* out[r * Sp + j] = a_r . b_j for rows a_r = a + r * a_stride (r < R) and the first 8 * blocks columns of
 * bt (D x Sp, column j = b_j). Four rows and two column blocks at a time: eight independent sums that
 * share each load of bt. */
static void dots(float *out, const float *a, int64_t a_stride, int64_t R, int64_t D, const float *bt, int64_t Sp,
                 int64_t blocks) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    const float *a0 = a + r * a_stride, *a1 = a0 + a_stride, *a2 = a1 + a_stride, *a3 = a2 + a_stride;
    float *o = out + r * Sp;
    int64_t jb = 0;
    for (; jb + 2 <= blocks; jb += 2) {
      v8 s00 = splat(0.f), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00;
      for (int64_t d = 0; d < D; ++d) {
        const float *col = bt + d * Sp + 8 * jb;
        const v8 k0 = load8(col), k1 = load8(col + 8);
        v8 w = splat(a0[d]);
        s00 += w * k0;
        s01 += w * k1;
        w = splat(a1[d]);
        s10 += w * k0;
        s11 += w * k1;
        w = splat(a2[d]);
        s20 += w * k0;
        s21 += w * k1;
        w = splat(a3[d]);
        s30 += w * k0;
        s31 += w * k1;
      }
      store8(o + 8 * jb, s00);
      store8(o + 8 * jb + 8, s01);
      store8(o + Sp + 8 * jb, s10);
      store8(o + Sp + 8 * jb + 8, s11);
      store8(o + 2 * Sp + 8 * jb, s20);
      store8(o + 2 * Sp + 8 * jb + 8, s21);
      store8(o + 3 * Sp + 8 * jb, s30);
      store8(o + 3 * Sp + 8 * jb + 8, s31);
    }
    if (jb < blocks) {
      v8 s0 = splat(0.f), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t d = 0; d < D; ++d) {
        const v8 k0 = load8(bt + d * Sp + 8 * jb);
        s0 += splat(a0[d]) * k0;
        s1 += splat(a1[d]) * k0;
        s2 += splat(a2[d]) * k0;
        s3 += splat(a3[d]) * k0;
      }
      store8(o + 8 * jb, s0);
      store8(o + Sp + 8 * jb, s1);
      store8(o + 2 * Sp + 8 * jb, s2);
      store8(o + 3 * Sp + 8 * jb, s3);
    }
  }
  for (; r < R; ++r) {
    const float *ar = a + r * a_stride;
    for (int64_t jb = 0; jb < blocks; ++jb) {
      v8 s0 = splat(0.f), s1 = s0; /* even and odd d: two sums */
      int64_t d = 0;
      for (; d + 2 <= D; d += 2) {
        s0 += splat(ar[d]) * load8(bt + d * Sp + 8 * jb);
        s1 += splat(ar[d + 1]) * load8(bt + (d + 1) * Sp + 8 * jb);
      }
      if (d < D) s0 += splat(ar[d]) * load8(bt + d * Sp + 8 * jb);
      store8(out + r * Sp + 8 * jb, s0 + s1);
    }
  }
}

/* bt (D x Sp) = the D floats of rows 0..S-1 (stride rstride) as columns, zeros in columns S..Sp-1 */
static void transpose_in(float *bt, const float *rows, int64_t rstride, int64_t S, int64_t Sp, int64_t D) {
  for (int64_t d = 0; d < D; ++d) memset(bt + d * Sp + S, 0, (size_t)(Sp - S) * sizeof(float));
  for (int64_t j = 0; j < S; ++j)
    for (int64_t d = 0; d < D; ++d) bt[d * Sp + j] = rows[j * rstride + d];
}

/* p[0..S) = softmax_j(scale * row[j]) over j < n, zeros for n <= j < S; row holds 8 * ceil(n / 8) floats
 * (it is overwritten) */
static void softmax_row(float *p, float *row, int64_t n, int64_t S, float scale) {
  const float inv = 1.f / exponentials(row, n, scale);
  int64_t j;
  for (j = 0; j < n; ++j) p[j] = row[j] * inv;
  for (; j < S; ++j) p[j] = 0.f;
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
    float *kt = malloc((size_t)(D * Sp + 4 * Sp) * sizeof(float) + 32);
    float *rows = kt + D * Sp; /* the scores of up to 4 queries */
    transpose_in(kt, k + k_start[b] * kv_stride + h * D, kv_stride, S, Sp, D);
    float *P = probs + p_offset[b] + h * T * S;
    for (int64_t i0 = 0; i0 < T; i0 += 4) {
      const int64_t R = T - i0 < 4 ? T - i0 : 4;
      const int64_t last = i0 + R - 1; /* causal: the group's last query sees the most keys */
      const int64_t n_max = causal ? (last + 1 < S ? last + 1 : S) : S;
      if (n_max > 0) dots(rows, q + (q_start[b] + i0) * q_stride + h * D, q_stride, R, D, kt, Sp, (n_max + 7) / 8);
      for (int64_t i = i0; i <= last; ++i) {
        const int64_t n = causal ? (i + 1 < S ? i + 1 : S) : S;
        float *o = out + (q_start[b] + i) * out_stride + h * D;
        float *p = P + i * S;
        if (n <= 0) {
          memset(o, 0, (size_t)D * sizeof(float));
          memset(p, 0, (size_t)S * sizeof(float));
          continue;
        }
        softmax_row(p, rows + (i - i0) * Sp, n, S, scale);
        combine(o, D, p, 1, v + k_start[b] * kv_stride + h * D, kv_stride, n);
      }
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
    for (int64_t i0 = 0; i0 < T; i0 += 4) { /* dP, 4 queries at a time, into ds */
      const int64_t R = T - i0 < 4 ? T - i0 : 4, last = i0 + R - 1;
      const int64_t n_max = causal ? (last + 1 < S ? last + 1 : S) : S;
      if (n_max > 0) dots(ds + i0 * Sp, gb + i0 * dout_stride, dout_stride, R, D, vt, Sp, (n_max + 7) / 8);
    }
    for (int64_t i = 0; i < T; ++i) {
      const int64_t n = causal ? (i + 1 < S ? i + 1 : S) : S;
      float *dsi = ds + i * Sp;
      const float *p = P + i * S;
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
