/* Dropout on the CPU in one pass, its mask drawn from a counter-based generator (Philox4x32-10, the
 * generator of cuRAND and of PyTorch's CUDA dropout; Salmon et al. 2011, "Parallel random numbers: as
 * easy as 1, 2, 3"). Loaded by attnlab/layers/dropout.py through attnlab/layers/cpu_kernels.py, which
 * compiles it once per machine and falls back to PyTorch's operations when it cannot.
 *
 *   out[i] = keep(seed, i) ? f(x[i]) * scale : 0,   f = identity or ReLU
 *
 * keep(seed, i): a 16-bit lane of Philox's output for key = seed is >= threshold (= round(p * 2^16)):
 * counter c gives four 32-bit words, eight 16-bit lanes; element 64 g + 16 w + 8 h + l takes half h of
 * word w of counter 8 g + l (the layout that lets eight neighbouring elements come from one vector
 * register; `group_bits` spells it out). The mask is
 * a function of (seed, i) alone: backward draws it again instead of keeping it, the result does not
 * depend on the number of threads, and a seed from PyTorch's generator keeps runs reproducible under
 * torch.manual_seed. out may be x (in place). Why: PyTorch's dropout draws its mask through the CPU
 * generator one element at a time, writes it, and applies it in further passes; here one pass reads x
 * and writes out.
 */
#include <stdint.h>

#define LANES 8      /* counters generated side by side (one AVX2 register of 32-bit words) */
#define GROUP 64     /* elements per LANES counters: LANES x 4 words x 2 lanes of 16 bits */

#if defined(__AVX2__)
#include <immintrin.h>

/* hi and lo 32 bits of a[l] * m for the eight 32-bit lanes of a */
static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
  __m256i even = _mm256_mul_epu32(a, m);                       /* lanes 0, 2, 4, 6 as 64-bit products */
  __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m); /* lanes 1, 3, 5, 7 */
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

static inline void philox8(uint64_t first, uint32_t k0, uint32_t k1, uint32_t out[4][LANES]) {
  __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)first), lane);
  /* the high word: + 1 in the lanes where the low word wrapped around */
  __m256i wrapped = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)((uint32_t)first ^ 0x80000000u)),
                                       _mm256_xor_si256(c0, _mm256_set1_epi32((int)0x80000000u)));
  __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(first >> 32)), wrapped);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
  for (int r = 0; r < 10; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, &hi0, &lo0);
    mulhilo8(c2, m1, &hi1, &lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
    c1 = lo1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  _mm256_storeu_si256((__m256i *)out[0], c0);
  _mm256_storeu_si256((__m256i *)out[1], c1);
  _mm256_storeu_si256((__m256i *)out[2], c2);
  _mm256_storeu_si256((__m256i *)out[3], c3);
}
#else
static inline void philox8(uint64_t first, uint32_t k0, uint32_t k1, uint32_t out[4][LANES]) {
  uint32_t c0[LANES], c1[LANES], c2[LANES], c3[LANES];
  for (int l = 0; l < LANES; ++l) {
    uint64_t c = first + (uint64_t)l;
    c0[l] = (uint32_t)c;
    c1[l] = (uint32_t)(c >> 32);
    c2[l] = 0u;
    c3[l] = 0u;
  }
  for (int r = 0; r < 10; ++r) {
    for (int l = 0; l < LANES; ++l) {
      uint64_t p0 = (uint64_t)0xD2511F53u * c0[l];
      uint64_t p1 = (uint64_t)0xCD9E8D57u * c2[l];
      uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0;
      uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = (uint32_t)p1;
      c3[l] = (uint32_t)p0;
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int l = 0; l < LANES; ++l) {
    out[0][l] = c0[l];
    out[1][l] = c1[l];
    out[2][l] = c2[l];
    out[3][l] = c3[l];
  }
}
#endif

/* The 16-bit lanes of the GROUP elements of group g (counters g * LANES + l, l < LANES): element
 * 16 w + 8 h + l is half h (0 = low) of word w of counter l's output, so that eight neighbouring
 * elements take the same half word of the eight counters (one vector register). */
static inline void group_bits(uint64_t g, uint32_t k0, uint32_t k1, uint16_t bits[GROUP]) {
  uint32_t words[4][LANES];
  philox8(g * LANES, k0, k1, words);
  for (int i = 0; i < GROUP; ++i) bits[i] = (uint16_t)(words[i >> 4][i & 7] >> (((i >> 3) & 1) * 16));
}

static inline void apply_scalar(const float *xs, float *os, int64_t m, const uint16_t bits[GROUP],
                                uint32_t threshold, float scale, int relu) {
  for (int64_t i = 0; i < m; ++i) {
    float v = relu && xs[i] < 0.f ? 0.f : xs[i]; /* NaN stays NaN, as torch.relu */
    os[i] = bits[i] >= threshold ? v * scale : 0.f;
  }
}

void attnlab_dropout(const float *x, float *out, int64_t n, uint64_t seed, uint32_t threshold, float scale,
                     int relu) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int64_t groups = (n + GROUP - 1) / GROUP;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t start = g * GROUP;
    const int64_t m = n - start < GROUP ? n - start : GROUP;
#if defined(__AVX2__)
    if (m == GROUP) {
      uint32_t words[4][LANES];
      philox8((uint64_t)g * LANES, k0, k1, words);
      const __m256i low = _mm256_set1_epi32(0xFFFF), below = _mm256_set1_epi32((int)threshold - 1);
      const __m256 s = _mm256_set1_ps(scale), zero = _mm256_setzero_ps();
      for (int w = 0; w < 4; ++w) {
        __m256i word = _mm256_loadu_si256((const __m256i *)words[w]);
        for (int h = 0; h < 2; ++h) {
          __m256i b = h ? _mm256_srli_epi32(word, 16) : _mm256_and_si256(word, low);
          __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, below));
          const int64_t i = start + 16 * w + 8 * h;
          __m256 v = _mm256_loadu_ps(x + i);
          if (relu) v = _mm256_max_ps(zero, v); /* max(0, NaN) is NaN, as torch.relu */
          _mm256_storeu_ps(out + i, _mm256_and_ps(_mm256_mul_ps(v, s), keep));
        }
      }
      continue;
    }
#endif
    uint16_t bits[GROUP];
    group_bits((uint64_t)g, k0, k1, bits);
    apply_scalar(x + start, out + start, m, bits, threshold, scale, relu);
  }
}

/* The generator's raw 16-bit lanes of elements 0..n-1 (what keep() compares with the threshold): for
 * tests against Philox's published known answers, and for statistics. */
void attnlab_random_bits16(uint16_t *out, int64_t n, uint64_t seed) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int64_t groups = (n + GROUP - 1) / GROUP;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t g = 0; g < groups; ++g) {
    uint16_t bits[GROUP];
    group_bits((uint64_t)g, k0, k1, bits);
    const int64_t start = g * GROUP;
    const int64_t m = n - start < GROUP ? n - start : GROUP;
    for (int64_t i = 0; i < m; ++i) out[start + i] = bits[i];
  }
}
