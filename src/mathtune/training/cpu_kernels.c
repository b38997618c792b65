/* CPU kernels for LoRA's dropout + A projection, and for dropout masks (training/cpu_kernels.py builds
 * and loads this file; training/dropout.py holds the same mask in torch ops, the definition).
 *
 * Why C: on CPU, dropout(x) @ A.T for a rank-8 adapter is ~8 small torch ops per call (draw, compare,
 * pack, mask, matmul, and their backward), each a pass over the [tokens, in] input with its own
 * dispatch. Here the mask is made from its seed inside the pass that reads x, so nothing of the
 * mask is stored or read back, and forward and backward are one pass each.
 *
 * The mask: 64-bit words of the splitmix64 stream seeded with `seed` (word w is the stream's
 * (w + 1)-th output) are read as four little-endian int16 lanes each; element e of the flattened
 * tensor is lane e of that sequence, and it is kept when the lane is >= `low`.
 *
 * bf16 values are passed as uint16 bits; they are widened exactly to float and the sums are kept in
 * float. Parallel loops use OpenMP, the same libgomp that torch loaded (so torch.set_num_threads holds).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t splitmix64(uint64_t seed, uint64_t word) {
  uint64_t z = seed + (word + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static inline float bf16_to_float(uint16_t bits) {
  uint32_t wide = (uint32_t)bits << 16;
  float value;
  memcpy(&value, &wide, sizeof value);
  return value;
}

static inline uint16_t float_to_bf16(float value) { /* round to nearest even, as torch does */
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN stays NaN */
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

/* keep[j] = 1 if element first + j is kept, for j < count; `lanes` is scratch for 4 * (count / 4 + 2) lanes.
 * Words are copied into it with memcpy (not read through a cast pointer), which strict aliasing allows. */
static void keep_span(uint8_t *keep, uint16_t *lanes, int64_t first, int64_t count, uint64_t seed, int32_t low) {
  int64_t first_word = first >> 2, last_word = (first + count - 1) >> 2;
  for (int64_t w = first_word; w <= last_word; w++) {
    uint64_t word = splitmix64(seed, (uint64_t)w);
    memcpy(lanes + 4 * (w - first_word), &word, sizeof word);
  }
  const uint16_t *mine = lanes + (first & 3);
  for (int64_t j = 0; j < count; j++) keep[j] = (int16_t)mine[j] >= low;
}

#define SPAN 4096 /* elements of a mask made at once in keep_mask */

void keep_mask(uint8_t *keep, int64_t count, uint64_t seed, int32_t low) {
  #pragma omp parallel
  {
    uint16_t lanes[SPAN + 8];
    #pragma omp for schedule(static)
    for (int64_t start = 0; start < count; start += SPAN) {
      int64_t span = count - start < SPAN ? count - start : SPAN;
      keep_span(keep + start, lanes, start, span, seed, low);
    }
  }
}

/* out[t, k] = sum_j keep(t, j) * x[t, j] * a[k, j]: x [rows, in] bf16, a [rank, in] float, out [rows, rank]. */
void lora_a_forward(const uint16_t *x, const float *a, float *out, int64_t rows, int64_t in, int64_t rank,
                    uint64_t seed, int32_t low, int use_mask) {
  #pragma omp parallel
  {
    float *row = malloc(in * sizeof(float));
    uint8_t *keep = malloc(in);
    uint16_t *lanes = malloc((in + 8) * sizeof(uint16_t));
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; t++) {
      const uint16_t *xt = x + t * in;
      if (use_mask) keep_span(keep, lanes, t * in, in, seed, low);
      else memset(keep, 1, in);
      for (int64_t j = 0; j < in; j++) row[j] = keep[j] ? bf16_to_float(xt[j]) : 0.0f;
      for (int64_t k = 0; k < rank; k++) {
        const float *ak = a + k * in;
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < in; j++) sum += row[j] * ak[j];
        out[t * rank + k] = sum;
      }
    }
    free(row);
    free(keep);
    free(lanes);
  }
}

/* Given g = d loss / d out [rows, rank] (float): grad_x[t, j] = keep(t, j) * sum_k g[t, k] * a[k, j] as bf16
 * (skipped when grad_x is NULL), and grad_a[k, j] = sum_t g[t, k] * keep(t, j) * x[t, j] (skipped when NULL). */
void lora_a_backward(const uint16_t *x, const float *a, const float *g, uint16_t *grad_x, float *grad_a,
                     int64_t rows, int64_t in, int64_t rank, uint64_t seed, int32_t low, int use_mask) {
  int threads = omp_get_max_threads();
  /* each thread sums its rows into its own slice; the slices are added in thread order afterwards, so the
   * result does not depend on which thread finishes first */
  float *partials = grad_a ? calloc((size_t)threads * rank * in, sizeof(float)) : NULL;
  #pragma omp parallel num_threads(threads)
  {
    float *row = malloc(in * sizeof(float));
    uint8_t *keep = malloc(in);
    uint16_t *lanes = malloc((in + 8) * sizeof(uint16_t));
    float *partial = partials ? partials + (size_t)omp_get_thread_num() * rank * in : NULL;
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; t++) {
      const float *gt = g + t * rank;
      if (use_mask) keep_span(keep, lanes, t * in, in, seed, low);
      else memset(keep, 1, in);
      if (grad_x) {
        for (int64_t j = 0; j < in; j++) row[j] = 0.0f;
        for (int64_t k = 0; k < rank; k++) {
          const float *ak = a + k * in;
          float gk = gt[k];
          #pragma omp simd
          for (int64_t j = 0; j < in; j++) row[j] += gk * ak[j];
        }
        uint16_t *gx = grad_x + t * in;
        for (int64_t j = 0; j < in; j++) gx[j] = keep[j] ? float_to_bf16(row[j]) : 0;
      }
      if (partial) {
        const uint16_t *xt = x + t * in;
        for (int64_t j = 0; j < in; j++) row[j] = keep[j] ? bf16_to_float(xt[j]) : 0.0f;
        for (int64_t k = 0; k < rank; k++) {
          float *pk = partial + k * in;
          float gk = gt[k];
          #pragma omp simd
          for (int64_t j = 0; j < in; j++) pk[j] += gk * row[j];
        }
      }
    }
    free(row);
    free(keep);
    free(lanes);
  }
  if (partials) {
    memcpy(grad_a, partials, rank * in * sizeof(float));
    for (int i = 1; i < threads; i++) {
      const float *slice = partials + (size_t)i * rank * in;
      for (int64_t e = 0; e < rank * in; e++) grad_a[e] += slice[e];
    }
    free(partials);
  }
}
