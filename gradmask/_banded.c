/* Banded LoG filtering of float32 maps on CPU: the fast path of gradmask.laplacian.LoGFilter for
 * small windows (radius 1-4 per axis: the default 5x5 window has radius 2).
 *
 * The kernel is a sum of `terms` (1 or 2) separable products, k(y, x) = sum_t row_t(y) col_t(x).
 * Maps go through in blocks of about BLOCK_ELEMENTS floats (in cache), each laid out with its
 * padding, (Q, P) = (H + 2 ry, W + 2 rx):
 *   a   = |maps| (or maps), each row padded along x (mirror without repeating the edge, or zero);
 *   h_t = col_t filtered along x over the whole flat block in one pass, then each map's pad rows
 *         filled with mirrored (or zero) rows;
 *   o   = sum_t row_t filtered along y (stride P), one pass;
 * and the (H, W) interior of o (or |o|) is copied out. With isolate_nonfinite, one flat pass over the block's
 * input tells whether it holds a non-finite value; only such a block is laid out with non-finite inputs read
 * as 0 (they reach no neighbour) and copied out with +inf at their positions (reading the input again).
 * Every filter pass is one flat loop with the
 * taps in registers, vectorized by the compiler (target_clones: AVX-512, AVX2 or baseline, chosen
 * at load time). 20 multiply-adds per position for the 5x5 window, against 4 (H + W) for the
 * matrix-product path.
 *
 * gradmask_finite_input / gradmask_mark_nonfinite do the same two steps for the matrix-product path
 * (float32 CPU blocks), fused with its |maps| and |result| passes. gradmask_sample_scales is the one-pass
 * per-sample scale of gradmask.mask (the norms of lateral / norm mode).
 *
 * The library is loaded with ctypes (gradmask.laplacian): the module init below only makes the file
 * importable, so that setuptools builds it as an extension module.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_ELEMENTS 16384
#define VERSION 2 /* of the functions and their arguments: gradmask.laplacian.COMPILED_VERSION */
#define MAX_TERMS 2
#define MAX_RADIUS 4

static inline int mirror(int i, int n) /* reflect without repeating the edge, n >= 2 */
{
    if (i < 0) i = -i;
    if (i > n - 1) i = 2 * (n - 1) - i;
    return i;
}

/* dst[i] = sum_t sum_d taps[t][d] * src[t][i + (d - R) * stride] for i in [0, n) */
#define DEFINE_FILTER(R)                                                                               \
    __attribute__((target_clones("avx512f", "avx2", "default")))                                       \
    static void filter_r##R(const float *const *src, float *restrict dst, int64_t n,                   \
                            const float *taps, int terms, int64_t stride)                              \
    {                                                                                                  \
        float w[MAX_TERMS][2 * R + 1];                                                                 \
        for (int t = 0; t < terms; t++)                                                                \
            for (int d = 0; d <= 2 * R; d++) w[t][d] = taps[t * (2 * R + 1) + d];                      \
        const float *restrict s0 = src[0];                                                             \
        if (terms == 1) {                                                                              \
            for (int64_t i = 0; i < n; i++) {                                                          \
                float acc = 0.0f;                                                                      \
                for (int d = 0; d <= 2 * R; d++) acc += w[0][d] * s0[i + (d - R) * stride];            \
                dst[i] = acc;                                                                          \
            }                                                                                          \
        } else {                                                                                       \
            const float *restrict s1 = src[1];                                                         \
            for (int64_t i = 0; i < n; i++) {                                                          \
                float acc = 0.0f;                                                                      \
                for (int d = 0; d <= 2 * R; d++)                                                       \
                    acc += w[0][d] * s0[i + (d - R) * stride] + w[1][d] * s1[i + (d - R) * stride];    \
                dst[i] = acc;                                                                          \
            }                                                                                          \
        }                                                                                              \
    }
DEFINE_FILTER(1)
DEFINE_FILTER(2)
DEFINE_FILTER(3)
DEFINE_FILTER(4)

static void filter(int r, const float *const *src, float *dst, int64_t n, const float *taps, int terms,
                   int64_t stride)
{
    switch (r) {
    case 1: filter_r1(src, dst, n, taps, terms, stride); break;
    case 2: filter_r2(src, dst, n, taps, terms, stride); break;
    case 3: filter_r3(src, dst, n, taps, terms, stride); break;
    default: filter_r4(src, dst, n, taps, terms, stride); break;
    }
}

/* Returns 0 on success, 1 for arguments outside the supported range, 2 when memory runs out.
 * in, out: (maps, height, width) contiguous float32 (may not overlap); row_taps (terms, 2 ry + 1),
 * col_taps (terms, 2 rx + 1); 1 <= ry <= min(4, height - 1), 1 <= rx <= min(4, width - 1).
 * isolate_nonfinite: non-finite inputs are read as 0, and out is +inf at their positions. */
__attribute__((target_clones("avx512f", "avx2", "default")))
int gradmask_banded_log(const float *in, float *out, int64_t maps, int height, int width,
                        const float *row_taps, const float *col_taps, int terms, int ry, int rx,
                        int reflect, int abs_input, int abs_output, int isolate_nonfinite)
{
    if (terms < 1 || terms > MAX_TERMS || ry < 1 || ry > MAX_RADIUS || rx < 1 || rx > MAX_RADIUS ||
        ry > height - 1 || rx > width - 1 || maps < 0)
        return 1;
    const int P = width + 2 * rx, Q = height + 2 * ry;
    const int64_t hw = (int64_t)height * width, qp = (int64_t)Q * P;
    int64_t block = BLOCK_ELEMENTS / qp;
    if (block < 1) block = 1;
    const int64_t cap = block * qp, margin = (int64_t)ry * P + rx; /* reads reach margin past either end */
    float *a = calloc(cap + 2 * margin, sizeof(float));
    float *h = calloc(MAX_TERMS * (cap + 2 * margin), sizeof(float));
    float *o = calloc(cap, sizeof(float));
    if (!a || !h || !o) {
        free(a); free(h); free(o);
        return 2;
    }
    int left[MAX_RADIUS + 1], right[MAX_RADIUS + 1]; /* source columns of the pad columns */
    for (int j = 1; j <= rx; j++) {
        left[j] = mirror(-j, width);
        right[j] = mirror(width - 1 + j, width);
    }
    const int kx = 2 * rx + 1;
    float *ab = a + margin;
    float *hs[MAX_TERMS]; /* h_t, the column-filtered block of term t */
    for (int t = 0; t < terms; t++) hs[t] = h + t * (cap + 2 * margin) + margin;
    for (int64_t first = 0; first < maps; first += block) {
        const int64_t count = maps - first < block ? maps - first : block, n = count * qp;
        const float *src = in + first * hw;
        float *dst = out + first * hw;
        int nonfinite = 0; /* whether the block holds a non-finite input (with isolate_nonfinite) */
        if (isolate_nonfinite)
            for (int64_t i = 0; i < count * hw; i++) nonfinite |= !(fabsf(src[i]) < INFINITY); /* NaN too */
        for (int64_t m = 0; m < count; m++) {
            for (int y = 0; y < height; y++) {
                const float *s = src + m * hw + (int64_t)y * width;
                float *row = ab + m * qp + (int64_t)(ry + y) * P + rx;
                if (nonfinite)
                    for (int x = 0; x < width; x++) {
                        const float v = abs_input ? fabsf(s[x]) : s[x];
                        row[x] = fabsf(v) < INFINITY ? v : 0.0f;
                    }
                else if (abs_input)
                    for (int x = 0; x < width; x++) row[x] = fabsf(s[x]);
                else
                    memcpy(row, s, sizeof(float) * width);
                for (int j = 1; j <= rx; j++) {
                    row[-j] = reflect ? row[left[j]] : 0.0f;
                    row[width - 1 + j] = reflect ? row[right[j]] : 0.0f;
                }
            }
        }
        for (int t = 0; t < terms; t++) {
            float *ht = hs[t];
            const float *srcs[1] = {ab};
            filter(rx, srcs, ht, n, col_taps + t * kx, 1, 1);
            for (int64_t m = 0; m < count; m++) { /* each map's pad rows */
                float *base = ht + m * qp;
                for (int j = 1; j <= ry; j++) {
                    float *top = base + (int64_t)(ry - j) * P, *bottom = base + (int64_t)(ry + height - 1 + j) * P;
                    if (reflect) {
                        memcpy(top, base + (int64_t)(ry + mirror(-j, height)) * P, sizeof(float) * P);
                        memcpy(bottom, base + (int64_t)(ry + mirror(height - 1 + j, height)) * P, sizeof(float) * P);
                    } else {
                        memset(top, 0, sizeof(float) * P);
                        memset(bottom, 0, sizeof(float) * P);
                    }
                }
            }
        }
        filter(ry, (const float *const *)hs, o, n, row_taps, terms, P);
        for (int64_t m = 0; m < count; m++) {
            for (int y = 0; y < height; y++) {
                const float *s = o + m * qp + (int64_t)(ry + y) * P + rx;
                const float *g = src + m * hw + (int64_t)y * width; /* the input, read where it held a non-finite */
                float *d = dst + m * hw + (int64_t)y * width;
                if (nonfinite && abs_output)
                    for (int x = 0; x < width; x++) d[x] = fabsf(g[x]) < INFINITY ? fabsf(s[x]) : INFINITY;
                else if (nonfinite)
                    for (int x = 0; x < width; x++) d[x] = fabsf(g[x]) < INFINITY ? s[x] : INFINITY;
                else if (abs_output)
                    for (int x = 0; x < width; x++) d[x] = fabsf(s[x]);
                else
                    memcpy(d, s, sizeof(float) * width);
            }
        }
    }
    free(a); free(h); free(o);
    return 0;
}

/* The matrix-product path's input and output with isolate_nonfinite (float32 blocks in cache; n values).
 * out = |in| (abs_input) or in, 0 where in is not finite; returns whether in held a non-finite value. */
__attribute__((target_clones("avx512f", "avx2", "default")))
int gradmask_finite_input(const float *in, float *out, int64_t n, int abs_input)
{
    int nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
        const float v = abs_input ? fabsf(in[i]) : in[i];
        const int finite = fabsf(v) < INFINITY; /* false for NaN too */
        nonfinite |= !finite;
        out[i] = finite ? v : 0.0f;
    }
    return nonfinite;
}

/* out = |out| (abs_output) or out, and +inf where in is not finite when nonfinite (what
 * gradmask_finite_input returned for in: without, in is not read). */
__attribute__((target_clones("avx512f", "avx2", "default")))
void gradmask_mark_nonfinite(const float *in, float *out, int64_t n, int abs_output, int nonfinite)
{
    if (nonfinite && abs_output)
        for (int64_t i = 0; i < n; i++) out[i] = fabsf(in[i]) < INFINITY ? fabsf(out[i]) : INFINITY;
    else if (nonfinite)
        for (int64_t i = 0; i < n; i++) out[i] = fabsf(in[i]) < INFINITY ? out[i] : INFINITY;
    else if (abs_output)
        for (int64_t i = 0; i < n; i++) out[i] = fabsf(out[i]);
}

/* The power-of-two scales of gradmask.mask._sample_scales, for `samples` consecutive samples of `elements`
 * values each (float32, or bfloat16 when bf16): scales[i] = 2**(exponent - e) with e the frexp exponent
 * of sample i's largest |value| (at most 2**127), or 1 when the sample holds a NaN or an inf. One pass:
 * the largest |value| is the largest of the bit patterns with the sign cleared (NaN above inf). */
__attribute__((target_clones("avx512f", "avx2", "default")))
void gradmask_sample_scales(const void *in, int64_t samples, int64_t elements, int bf16, int exponent,
                            float *scales)
{
    for (int64_t i = 0; i < samples; i++) {
        uint32_t largest = 0;
        if (bf16) {
            const uint16_t *v = (const uint16_t *)in + i * elements;
            uint16_t m = 0;
            for (int64_t j = 0; j < elements; j++) {
                const uint16_t b = v[j] & 0x7FFFu;
                m = b > m ? b : m;
            }
            largest = (uint32_t)m << 16;
        } else {
            const uint32_t *v = (const uint32_t *)in + i * elements;
            for (int64_t j = 0; j < elements; j++) {
                const uint32_t b = v[j] & 0x7FFFFFFFu;
                largest = b > largest ? b : largest;
            }
        }
        int biased = 127; /* 1.0 */
        if (largest < 0x7F800000u) {
            float value;
            int e;
            memcpy(&value, &largest, sizeof value);
            frexpf(value, &e); /* e = 0 for 0 */
            biased = 127 + exponent - e;
            if (biased > 254) biased = 254;
        }
        const uint32_t bits = (uint32_t)biased << 23;
        memcpy(scales + i, &bits, sizeof bits);
    }
}

int gradmask_compiled_version(void) { return VERSION; }

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_banded",
                                    "Banded LoG filter (loaded with ctypes by gradmask.laplacian).", -1, NULL};

PyMODINIT_FUNC PyInit__banded(void) { return PyModule_Create(&module); }
