/* ---- edgeplug neon kernels: NEON intrinsics on AArch64; elsewhere GNU C generic vectors (lowered by the
   compiler to SSE/AVX/...; the int8 dot product uses AVX2 where the host has it) or, without them or with
   -DEDGEPLUG_SCALAR, plain scalar C ---- */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* EDGEPLUG_SCALAR forces the plain scalar C path everywhere (for testing it, or for odd compilers). */
#if defined(__ARM_NEON) && defined(__aarch64__) && !defined(EDGEPLUG_SCALAR)
#include <arm_neon.h>
#define EP_NEON 1
#endif

#if !defined(EP_NEON) && defined(__AVX2__) && !defined(EDGEPLUG_SCALAR)
#include <immintrin.h> /* only the int8 dot product of the host build uses it */
#define EP_X86_AVX2 1
#endif

#define EP_ALIGN __attribute__((aligned(64)))

enum { EP_ACT_NONE = 0, EP_ACT_RELU = 1, EP_ACT_CLIP = 2, EP_ACT_SIGMOID = 3, EP_ACT_HARDSIGMOID = 4,
       EP_ACT_HARDSWISH = 5 };
enum { EP_BIAS_NONE = 0, EP_BIAS_ROW = 1, EP_BIAS_COL = 2, EP_BIAS_FULL = 3 };
enum { EP_ADD = 0, EP_MUL = 1 };

static inline float ep_act1(float v, int act, float p0, float p1) {
    switch (act) {
    case EP_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case EP_ACT_CLIP: return v < p0 ? p0 : (v > p1 ? p1 : v);
    case EP_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case EP_ACT_HARDSIGMOID: { float t = p0 * v + p1; return t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t); }
    case EP_ACT_HARDSWISH: { float t = v * (1.0f / 6.0f) + 0.5f; t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t); return v * t; }
    default: return v;
    }
}

/* y[i] = act(x[i]); x may equal y. */
static void ep_activation(const float* x, float* y, int n, int act, float p0, float p1) {
    int i = 0;
#ifdef EP_NEON
    if (act == EP_ACT_RELU || act == EP_ACT_CLIP) {
        float32x4_t lo = vdupq_n_f32(act == EP_ACT_RELU ? 0.0f : p0);
        float32x4_t hi = vdupq_n_f32(act == EP_ACT_RELU ? INFINITY : p1);
        for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vminq_f32(vmaxq_f32(vld1q_f32(x + i), lo), hi));
    } else if (act == EP_ACT_HARDSWISH || act == EP_ACT_HARDSIGMOID) {
        float32x4_t a = vdupq_n_f32(act == EP_ACT_HARDSWISH ? 1.0f / 6.0f : p0);
        float32x4_t b = vdupq_n_f32(act == EP_ACT_HARDSWISH ? 0.5f : p1);
        float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f);
        for (; i + 4 <= n; i += 4) {
            float32x4_t v = vld1q_f32(x + i);
            float32x4_t t = vminq_f32(vmaxq_f32(vfmaq_f32(b, v, a), zero), one);
            vst1q_f32(y + i, act == EP_ACT_HARDSWISH ? vmulq_f32(v, t) : t);
        }
    }
#endif
    if (act == EP_ACT_NONE) {
        if (x != y) memmove(y, x, (size_t)n * sizeof(float));
        return;
    }
    for (; i < n; ++i) y[i] = ep_act1(x[i], act, p0, p1);
}

/* C[M][N] = bias + C, then the activation; bias is per row (M), per column (N) or full (row stride ldbias). */
static void ep_epilogue(float* C, int M, int N, int ldc, const float* bias, int bias_mode, int ldbias, int act,
                        float p0, float p1) {
    for (int m = 0; m < M; ++m) {
        float* c = C + (size_t)m * ldc;
        if (bias_mode == EP_BIAS_ROW) {
            float b = bias[m];
            int n = 0;
#ifdef EP_NEON
            float32x4_t bv = vdupq_n_f32(b);
            for (; n + 4 <= N; n += 4) vst1q_f32(c + n, vaddq_f32(vld1q_f32(c + n), bv));
#endif
            for (; n < N; ++n) c[n] += b;
        } else if (bias_mode == EP_BIAS_COL || bias_mode == EP_BIAS_FULL) {
            const float* b = bias_mode == EP_BIAS_COL ? bias : bias + (size_t)m * ldbias;
            int n = 0;
#ifdef EP_NEON
            for (; n + 4 <= N; n += 4) vst1q_f32(c + n, vaddq_f32(vld1q_f32(c + n), vld1q_f32(b + n)));
#endif
            for (; n < N; ++n) c[n] += b[n];
        }
        if (act != EP_ACT_NONE) ep_activation(c, c, N, act, p0, p1);
    }
}

/* The epilogue of the block of C at (m, n), while it is still in cache. */
#define EP_EPI_AT(C, rows, cols, ldc, m, n)                                                                  \
    do {                                                                                                     \
        if (bias_mode || act)                                                                                \
            ep_epilogue(C, rows, cols, ldc,                                                                  \
                        bias_mode == EP_BIAS_ROW ? bias + (m) : bias_mode == EP_BIAS_COL ? bias + (n)        \
                        : bias_mode == EP_BIAS_FULL ? bias + (size_t)(m) * ldbias + (n) : bias,              \
                        bias_mode, ldbias, act, p0, p1);                                                     \
    } while (0)

#if !defined(EP_NEON) && defined(__GNUC__) && !defined(EDGEPLUG_SCALAR)
/* Portable path: GNU C generic vectors (8 floats), lowered by the compiler to SSE/AVX or scalar code. */
typedef float ep_v8 __attribute__((vector_size(32)));
static inline ep_v8 ep_ld8(const float* p) { ep_v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void ep_st8(float* p, ep_v8 v) { memcpy(p, &v, sizeof v); }
#define EP_GENERIC_VEC 1
/* p[0], p[2], ..., p[14] */
static inline ep_v8 ep_even8(const float* p) {
    typedef int ep_i8 __attribute__((vector_size(32)));
    ep_v8 a = ep_ld8(p), b = ep_ld8(p + 8);
#if defined(__clang__)
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
#else
    return __builtin_shuffle(a, b, (ep_i8){0, 2, 4, 6, 8, 10, 12, 14});
#endif
}
#endif

#if defined(EP_GENERIC_VEC) && defined(__AVX512F__)
/* 32 wide registers: one 16-float vector per row, 12 rows per tile */
typedef float ep_v16 __attribute__((vector_size(64)));
#define EP_WIDE16 1
#define EP_MR 12
#else
#define EP_MR 6 /* rows of A per register tile; the tile is EP_MR x 16 columns */
#endif

/* One register tile: C[r][0..15] = sum_k A[r][k] * B[k][0..15] for `rows` <= EP_MR rows. */
static inline void ep_tile16(int rows, int K, const float* A, int lda, const float* B, int ldb, float* C,
                             int ldc) {
#ifdef EP_NEON
    float32x4_t acc[EP_MR][4];
    for (int r = 0; r < EP_MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = vdupq_n_f32(0.0f);
    if (rows == EP_MR) {
        const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda, *a5 = A + 5 * lda;
        for (int k = 0; k < K; ++k, B += ldb) {
            float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4), b2 = vld1q_f32(B + 8), b3 = vld1q_f32(B + 12);
#define EP_ROW(r, ar) { float32x4_t av = vdupq_n_f32(ar[k]); \
            acc[r][0] = vfmaq_f32(acc[r][0], b0, av); acc[r][1] = vfmaq_f32(acc[r][1], b1, av); \
            acc[r][2] = vfmaq_f32(acc[r][2], b2, av); acc[r][3] = vfmaq_f32(acc[r][3], b3, av); }
            EP_ROW(0, a0) EP_ROW(1, a1) EP_ROW(2, a2) EP_ROW(3, a3) EP_ROW(4, a4) EP_ROW(5, a5)
#undef EP_ROW
        }
    } else {
        for (int k = 0; k < K; ++k, B += ldb) {
            float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4), b2 = vld1q_f32(B + 8), b3 = vld1q_f32(B + 12);
            for (int r = 0; r < rows; ++r) {
                float32x4_t av = vdupq_n_f32(A[(size_t)r * lda + k]);
                acc[r][0] = vfmaq_f32(acc[r][0], b0, av); acc[r][1] = vfmaq_f32(acc[r][1], b1, av);
                acc[r][2] = vfmaq_f32(acc[r][2], b2, av); acc[r][3] = vfmaq_f32(acc[r][3], b3, av);
            }
        }
    }
    for (int r = 0; r < rows; ++r) {
        float* c = C + (size_t)r * ldc;
        vst1q_f32(c, acc[r][0]); vst1q_f32(c + 4, acc[r][1]); vst1q_f32(c + 8, acc[r][2]); vst1q_f32(c + 12, acc[r][3]);
    }
#elif defined(EP_WIDE16)
    ep_v16 acc[EP_MR];
    for (int r = 0; r < EP_MR; ++r) acc[r] = (ep_v16){0};
    if (rows == EP_MR) {
        for (int k = 0; k < K; ++k, B += ldb) {
            ep_v16 b0;
            memcpy(&b0, B, sizeof b0);
            for (int r = 0; r < EP_MR; ++r) acc[r] += b0 * A[(size_t)r * lda + k];
        }
    } else {
        for (int k = 0; k < K; ++k, B += ldb) {
            ep_v16 b0;
            memcpy(&b0, B, sizeof b0);
            for (int r = 0; r < rows; ++r) acc[r] += b0 * A[(size_t)r * lda + k];
        }
    }
    for (int r = 0; r < rows; ++r) memcpy(C + (size_t)r * ldc, &acc[r], sizeof acc[r]);
#elif defined(EP_GENERIC_VEC)
    ep_v8 acc[EP_MR][2];
    for (int r = 0; r < EP_MR; ++r) acc[r][0] = acc[r][1] = (ep_v8){0};
    if (rows == EP_MR) {
        const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda, *a5 = A + 5 * lda;
        for (int k = 0; k < K; ++k, B += ldb) {
            ep_v8 b0 = ep_ld8(B), b1 = ep_ld8(B + 8);
#define EP_ROW(r, ar) { float av = ar[k]; acc[r][0] += b0 * av; acc[r][1] += b1 * av; }
            EP_ROW(0, a0) EP_ROW(1, a1) EP_ROW(2, a2) EP_ROW(3, a3) EP_ROW(4, a4) EP_ROW(5, a5)
#undef EP_ROW
        }
    } else {
        for (int k = 0; k < K; ++k, B += ldb) {
            ep_v8 b0 = ep_ld8(B), b1 = ep_ld8(B + 8);
            for (int r = 0; r < rows; ++r) {
                float av = A[(size_t)r * lda + k];
                acc[r][0] += b0 * av; acc[r][1] += b1 * av;
            }
        }
    }
    for (int r = 0; r < rows; ++r) { ep_st8(C + (size_t)r * ldc, acc[r][0]); ep_st8(C + (size_t)r * ldc + 8, acc[r][1]); }
#else
    for (int r = 0; r < rows; ++r) {
        float acc[16] = {0};
        const float* b = B;
        for (int k = 0; k < K; ++k, b += ldb)
            for (int j = 0; j < 16; ++j) acc[j] += A[(size_t)r * lda + k] * b[j];
        memcpy(C + (size_t)r * ldc, acc, sizeof acc);
    }
#endif
}

/* C[M][N] = A[M][K] * B[K][N] (+ bias, activation), row-major with leading dimensions. Column panels of
   16 outer (a K x 16 panel of B stays in cache while every row tile of A passes over it), register tiles of
   EP_MR x 16 inner; the epilogue runs on each tile right after it is stored. `panel` (K*16 floats of
   workspace, or NULL) holds the zero-padded last columns. */
static void ep_gemm_f32(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                        int ldc, const float* bias, int bias_mode, int ldbias, int act, float p0, float p1,
                        float* panel) {
    int n = 0;
    for (; n + 16 <= N; n += 16) {
        for (int m = 0; m < M; m += EP_MR) {
            int rows = M - m < EP_MR ? M - m : EP_MR;
            float* c = C + (size_t)m * ldc + n;
            ep_tile16(rows, K, A + (size_t)m * lda, lda, B + n, ldb, c, ldc);
            EP_EPI_AT(c, rows, 16, ldc, m, n);
        }
    }
    if (n == N) return;
    if (panel) { /* the last N % 16 columns: zero-padded copy of the B panel, full tiles into a small C block */
        int r = N - n;
        float cbuf[EP_MR * 16];
        for (int k = 0; k < K; ++k) {
            memcpy(panel + (size_t)k * 16, B + (size_t)k * ldb + n, (size_t)r * sizeof(float));
            memset(panel + (size_t)k * 16 + r, 0, (size_t)(16 - r) * sizeof(float));
        }
        for (int m = 0; m < M; m += EP_MR) {
            int rows = M - m < EP_MR ? M - m : EP_MR;
            ep_tile16(rows, K, A + (size_t)m * lda, lda, panel, 16, cbuf, 16);
            float* c = C + (size_t)m * ldc + n;
            for (int i = 0; i < rows; ++i) memcpy(c + (size_t)i * ldc, cbuf + i * 16, (size_t)r * sizeof(float));
            EP_EPI_AT(c, rows, r, ldc, m, n);
        }
        return;
    }
    for (int m = 0; m < M; ++m) { /* no panel buffer: column by column */
        const float* a = A + (size_t)m * lda;
        float* c = C + (size_t)m * ldc;
        for (int j = n; j < N; ++j) {
            float s = 0.0f;
            const float* b = B + j;
            for (int k = 0; k < K; ++k, b += ldb) s += a[k] * *b;
            c[j] = s;
        }
        EP_EPI_AT(c + n, 1, N - n, ldc, m, n);
    }
}

/* Y[M][N] = X[M][K] * W[N][K]^T (+ bias, activation) for few rows: contiguous dot products over K. */
static void ep_gemv_f32(int M, int N, int K, const float* X, const float* W, float* Y, const float* bias,
                        int bias_mode, int ldbias, int act, float p0, float p1) {
    for (int m = 0; m < M; ++m) {
        const float* x = X + (size_t)m * K;
        float* y = Y + (size_t)m * N;
        for (int n = 0; n < N; ++n) {
            const float* w = W + (size_t)n * K;
            int k = 0;
            float s = 0.0f;
#ifdef EP_NEON
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (; k + 16 <= K; k += 16) {
                a0 = vfmaq_f32(a0, vld1q_f32(x + k), vld1q_f32(w + k));
                a1 = vfmaq_f32(a1, vld1q_f32(x + k + 4), vld1q_f32(w + k + 4));
                a2 = vfmaq_f32(a2, vld1q_f32(x + k + 8), vld1q_f32(w + k + 8));
                a3 = vfmaq_f32(a3, vld1q_f32(x + k + 12), vld1q_f32(w + k + 12));
            }
            s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
#elif defined(EP_GENERIC_VEC)
            ep_v8 a0 = {0}, a1 = {0};
            for (; k + 16 <= K; k += 16) {
                a0 += ep_ld8(x + k) * ep_ld8(w + k);
                a1 += ep_ld8(x + k + 8) * ep_ld8(w + k + 8);
            }
            a0 += a1;
            for (int j = 0; j < 8; ++j) s += a0[j];
#endif
            for (; k < K; ++k) s += x[k] * w[k];
            y[n] = s;
        }
        EP_EPI_AT(y, 1, N, N, m, 0);
    }
}

/* Unfold one group of a [C][H][W] image into col[C*KH*KW][OH*OW] (zero padding). */
static void ep_im2col(const float* in, int C, int H, int W, int KH, int KW, int SH, int SW, int PT, int PL,
                      int DH, int DW, int OH, int OW, float* col) {
    for (int c = 0; c < C; ++c)
        for (int kh = 0; kh < KH; ++kh)
            for (int kw = 0; kw < KW; ++kw) {
                float* dst = col + ((size_t)(c * KH + kh) * KW + kw) * OH * OW;
                for (int oh = 0; oh < OH; ++oh) {
                    int ih = oh * SH - PT + kh * DH;
                    float* d = dst + (size_t)oh * OW;
                    if (ih < 0 || ih >= H) { memset(d, 0, (size_t)OW * sizeof(float)); continue; }
                    const float* src = in + ((size_t)c * H + ih) * W;
                    int base = kw * DW - PL;
                    if (SW == 1 && base >= 0 && base + OW <= W) { memcpy(d, src + base, (size_t)OW * sizeof(float)); continue; }
                    for (int ow = 0; ow < OW; ++ow) {
                        int iw = ow * SW + base;
                        d[ow] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                    }
                }
            }
}

/* Grouped 2-D convolution, NCHW, batch 1: im2col (skipped for 1x1/stride 1/no pad) + GEMM + epilogue.
   w is [OC][C/G*KH*KW]; ws is workspace of C/G*KH*KW*(OH*OW + 16) floats (im2col, then the GEMM panel). */
static void ep_conv2d(const float* in, const float* w, const float* bias, float* out, int C, int H, int W,
                      int OC, int G, int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW, int OH,
                      int OW, int act, float p0, float p1, float* ws) {
    int cg = C / G, ocg = OC / G, K = cg * KH * KW, N = OH * OW;
    int direct = KH == 1 && KW == 1 && SH == 1 && SW == 1 && PT == 0 && PL == 0 && OH == H && OW == W;
    float* col = ws;
    float* panel = direct ? ws : ws + (size_t)K * N;
    for (int g = 0; g < G; ++g) {
        const float* src = in + (size_t)g * cg * H * W;
        const float* b = src;
        if (!direct) { ep_im2col(src, cg, H, W, KH, KW, SH, SW, PT, PL, DH, DW, OH, OW, col); b = col; }
        ep_gemm_f32(ocg, N, K, w + (size_t)g * ocg * K, K, b, N, out + (size_t)g * ocg * N, N,
                    bias ? bias + (size_t)g * ocg : 0, bias ? EP_BIAS_ROW : EP_BIAS_NONE, 0, act, p0, p1, panel);
    }
}

/* One depthwise output with bounds checks (borders and leftovers). */
static inline float ep_dw_point(const float* src, const float* wk, float acc, int H, int W, int KH, int KW,
                                int ih0, int iw0, int DH, int DW) {
    for (int kh = 0; kh < KH; ++kh) {
        int ih = ih0 + kh * DH;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
            int iw = iw0 + kw * DW;
            if (iw >= 0 && iw < W) acc += wk[kh * KW + kw] * src[(size_t)ih * W + iw];
        }
    }
    return acc;
}

/* Depthwise convolution (one input channel per group, any multiplier). The interior of each output row
   is computed in vector registers over all KH*KW taps; borders take the checked scalar path. */
static void ep_dwconv(const float* in, const float* w, const float* bias, float* out, int C, int H, int W,
                      int OC, int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW, int OH, int OW,
                      int act, float p0, float p1) {
    int mult = OC / C;
    int ow_a = (PL + SW - 1) / SW; /* first ow whose leftmost tap is inside the row */
    int last = W - 1 - (KW - 1) * DW + PL;
    int ow_b = last < 0 ? 0 : last / SW + 1; /* one past the last ow whose rightmost tap is inside */
    if (ow_b > OW) ow_b = OW;
    if (ow_a > ow_b) ow_a = ow_b;
    for (int oc = 0; oc < OC; ++oc) {
        const float* src = in + (size_t)(oc / mult) * H * W;
        const float* wk = w + (size_t)oc * KH * KW;
        float* dst = out + (size_t)oc * OH * OW;
        float b0 = bias ? bias[oc] : 0.0f;
        for (int oh = 0; oh < OH; ++oh) {
            float* d = dst + (size_t)oh * OW;
            int ih0 = oh * SH - PT;
            int kh_lo = 0, kh_hi = KH;
            while (kh_lo < KH && ih0 + kh_lo * DH < 0) ++kh_lo;
            while (kh_hi > kh_lo && ih0 + (kh_hi - 1) * DH >= H) --kh_hi;
            for (int ow = 0; ow < ow_a; ++ow) d[ow] = ep_dw_point(src, wk, b0, H, W, KH, KW, ih0, ow * SW - PL, DH, DW);
            int ow = ow_a;
#ifdef EP_NEON
            /* stride 1: four independent accumulators (16 outputs) hide the FMA latency */
            for (; SW == 1 && ow + 16 <= ow_b; ow += 16) {
                float32x4_t c0 = vdupq_n_f32(b0), c1 = c0, c2 = c0, c3 = c0;
                for (int kh = kh_lo; kh < kh_hi; ++kh) {
                    const float* row = src + (size_t)(ih0 + kh * DH) * W + ow - PL;
                    for (int kw = 0; kw < KW; ++kw) {
                        const float* p = row + kw * DW;
                        float32x4_t wv = vdupq_n_f32(wk[kh * KW + kw]);
                        c0 = vfmaq_f32(c0, vld1q_f32(p), wv);
                        c1 = vfmaq_f32(c1, vld1q_f32(p + 4), wv);
                        c2 = vfmaq_f32(c2, vld1q_f32(p + 8), wv);
                        c3 = vfmaq_f32(c3, vld1q_f32(p + 12), wv);
                    }
                }
                vst1q_f32(d + ow, c0); vst1q_f32(d + ow + 4, c1); vst1q_f32(d + ow + 8, c2); vst1q_f32(d + ow + 12, c3);
            }
            for (; ow + 4 <= ow_b && (SW == 1 || (ow + 3) * SW - PL + (KW - 1) * DW + 1 < W); ow += 4) {
                float32x4_t acc = vdupq_n_f32(b0);
                for (int kh = kh_lo; kh < kh_hi; ++kh) {
                    const float* row = src + (size_t)(ih0 + kh * DH) * W + ow * SW - PL;
                    for (int kw = 0; kw < KW; ++kw) {
                        const float* p = row + kw * DW;
                        float32x4_t x;
                        if (SW == 1) x = vld1q_f32(p);
                        else if (SW == 2) x = vld2q_f32(p).val[0];
                        else { float t[4] = {p[0], p[SW], p[2 * SW], p[3 * SW]}; x = vld1q_f32(t); }
                        acc = vfmaq_f32(acc, x, vdupq_n_f32(wk[kh * KW + kw]));
                    }
                }
                vst1q_f32(d + ow, acc);
            }
#elif defined(EP_GENERIC_VEC)
            for (; ow + 8 <= ow_b; ow += 8) {
                ep_v8 acc = {b0, b0, b0, b0, b0, b0, b0, b0};
                for (int kh = kh_lo; kh < kh_hi; ++kh) {
                    const float* row = src + (size_t)(ih0 + kh * DH) * W + ow * SW - PL;
                    for (int kw = 0; kw < KW; ++kw) {
                        const float* p = row + kw * DW;
                        ep_v8 x;
                        if (SW == 1) x = ep_ld8(p);
                        else if (SW == 2 && (ow + 7) * 2 - PL + (KW - 1) * DW + 1 < W) x = ep_even8(p);
                        else for (int j = 0; j < 8; ++j) x[j] = p[j * SW];
                        acc += x * wk[kh * KW + kw];
                    }
                }
                ep_st8(d + ow, acc);
            }
#endif
            for (; ow < OW; ++ow) d[ow] = ep_dw_point(src, wk, b0, H, W, KH, KW, ih0, ow * SW - PL, DH, DW);
        }
        if (act != EP_ACT_NONE) ep_activation(dst, dst, OH * OW, act, p0, p1);
    }
}

/* out = a (op) b over a broadcast shape collapsed to at most 4 dims; strides are in elements (0 = broadcast). */
static void ep_binary(int op, const float* a, const float* b, float* out, const int* dims, const int* sa,
                      const int* sb) {
    int n3 = dims[3], i = 0;
    for (int i0 = 0; i0 < dims[0]; ++i0)
        for (int i1 = 0; i1 < dims[1]; ++i1)
            for (int i2 = 0; i2 < dims[2]; ++i2) {
                const float* pa = a + (size_t)i0 * sa[0] + (size_t)i1 * sa[1] + (size_t)i2 * sa[2];
                const float* pb = b + (size_t)i0 * sb[0] + (size_t)i1 * sb[1] + (size_t)i2 * sb[2];
                float* po = out + i;
                int j = 0;
                if (sa[3] == 1 && sb[3] == 1) {
#ifdef EP_NEON
                    if (op == EP_ADD) for (; j + 4 <= n3; j += 4) vst1q_f32(po + j, vaddq_f32(vld1q_f32(pa + j), vld1q_f32(pb + j)));
                    else for (; j + 4 <= n3; j += 4) vst1q_f32(po + j, vmulq_f32(vld1q_f32(pa + j), vld1q_f32(pb + j)));
#endif
                    if (op == EP_ADD) for (; j < n3; ++j) po[j] = pa[j] + pb[j];
                    else for (; j < n3; ++j) po[j] = pa[j] * pb[j];
                } else if (sa[3] == 1 && sb[3] == 0) {
                    float s = pb[0];
#ifdef EP_NEON
                    float32x4_t v = vdupq_n_f32(s);
                    if (op == EP_ADD) for (; j + 4 <= n3; j += 4) vst1q_f32(po + j, vaddq_f32(vld1q_f32(pa + j), v));
                    else for (; j + 4 <= n3; j += 4) vst1q_f32(po + j, vmulq_f32(vld1q_f32(pa + j), v));
#endif
                    if (op == EP_ADD) for (; j < n3; ++j) po[j] = pa[j] + s;
                    else for (; j < n3; ++j) po[j] = pa[j] * s;
                } else {
                    for (; j < n3; ++j) {
                        float x = pa[(size_t)j * sa[3]], y = pb[(size_t)j * sb[3]];
                        po[j] = op == EP_ADD ? x + y : x * y;
                    }
                }
                i += n3;
            }
}

/* MaxPool / AveragePool over [C][H][W] (1-D pools use H = 1). */
static void ep_pool(int is_max, const float* in, float* out, int C, int H, int W, int KH, int KW, int SH, int SW,
                    int PT, int PL, int PB, int PR, int DH, int DW, int OH, int OW, int count_include_pad) {
    for (int c = 0; c < C; ++c) {
        const float* src = in + (size_t)c * H * W;
        float* dst = out + (size_t)c * OH * OW;
        for (int oh = 0; oh < OH; ++oh)
            for (int ow = 0; ow < OW; ++ow) {
                int h0 = oh * SH - PT, w0 = ow * SW - PL;
                if (is_max) {
                    float m = -INFINITY;
                    for (int kh = 0; kh < KH; ++kh) {
                        int ih = h0 + kh * DH;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < KW; ++kw) {
                            int iw = w0 + kw * DW;
                            if (iw < 0 || iw >= W) continue;
                            float v = src[(size_t)ih * W + iw];
                            m = v > m ? v : m;
                        }
                    }
                    dst[oh * OW + ow] = m;
                } else {
                    int h1 = h0 + KH, w1 = w0 + KW;
                    if (h1 > H + PB) h1 = H + PB;
                    if (w1 > W + PR) w1 = W + PR;
                    int pool = (h1 - h0) * (w1 - w0);
                    int hs = h0 < 0 ? 0 : h0, ws = w0 < 0 ? 0 : w0;
                    int he = h1 > H ? H : h1, we = w1 > W ? W : w1;
                    float s = 0.0f;
                    for (int ih = hs; ih < he; ++ih)
                        for (int iw = ws; iw < we; ++iw) s += src[(size_t)ih * W + iw];
                    int count = count_include_pad ? pool : (he - hs) * (we - ws);
                    dst[oh * OW + ow] = count > 0 ? s / (float)count : 0.0f;
                }
            }
    }
}

static void ep_global_avgpool(const float* in, float* out, int C, int HW) {
    for (int c = 0; c < C; ++c) {
        const float* src = in + (size_t)c * HW;
        int i = 0;
        float s = 0.0f;
#ifdef EP_NEON
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (; i + 4 <= HW; i += 4) acc = vaddq_f32(acc, vld1q_f32(src + i));
        s = vaddvq_f32(acc);
#endif
        for (; i < HW; ++i) s += src[i];
        out[c] = s / (float)HW;
    }
}

/* Softmax over the middle axis of [outer][n][inner]. */
static void ep_softmax(const float* in, float* out, int outer, int n, int inner) {
    for (int o = 0; o < outer; ++o)
        for (int k = 0; k < inner; ++k) {
            const float* x = in + (size_t)o * n * inner + k;
            float* y = out + (size_t)o * n * inner + k;
            float m = -INFINITY, s = 0.0f;
            for (int i = 0; i < n; ++i) m = x[(size_t)i * inner] > m ? x[(size_t)i * inner] : m;
            for (int i = 0; i < n; ++i) { float e = expf(x[(size_t)i * inner] - m); y[(size_t)i * inner] = e; s += e; }
            float r = 1.0f / s;
            for (int i = 0; i < n; ++i) y[(size_t)i * inner] *= r;
        }
}

/* Copy one input of a Concat: `outer` blocks of `block` floats into rows of `stride` floats at `offset`. */
static void ep_concat_part(const float* in, float* out, int outer, int block, int stride, int offset) {
    for (int o = 0; o < outer; ++o) memcpy(out + (size_t)o * stride + offset, in + (size_t)o * block, (size_t)block * sizeof(float));
}

/* Nearest-neighbour resize: out[c][i] = in[c][index[i]] for every output pixel i of each plane. */
static void ep_gather_plane(const float* in, float* out, int C, int HW, int OHW, const int32_t* index) {
    for (int c = 0; c < C; ++c) {
        const float* src = in + (size_t)c * HW;
        float* dst = out + (size_t)c * OHW;
        for (int i = 0; i < OHW; ++i) dst[i] = src[index[i]];
    }
}

/* out[c][r] = in[r][c] for a rows x cols matrix. */
static void ep_transpose2d(const float* in, float* out, int rows, int cols) {
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) out[(size_t)c * rows + r] = in[(size_t)r * cols + c];
}

/* QuantizeLinear followed by DequantizeLinear: round half to even, saturate, scale back. */
static void ep_fake_quant(const float* x, float* y, int n, float scale, int zp, int qmin, int qmax) {
    float inv = 1.0f / scale;
    for (int i = 0; i < n; ++i) {
        float q = nearbyintf(x[i] * inv) + (float)zp;
        q = q < (float)qmin ? (float)qmin : (q > (float)qmax ? (float)qmax : q);
        y[i] = (q - (float)zp) * scale;
    }
}

/* ---------------------------------------------- int8 ---------------------------------------------- */

/* Symmetric s8 quantization of n floats. */
static void ep_quantize_s8(const float* x, int8_t* q, int n, float scale) {
    float inv = 1.0f / scale;
    int i = 0;
#ifdef EP_NEON
    float32x4_t iv = vdupq_n_f32(inv);
    for (; i + 8 <= n; i += 8) {
        int32x4_t a = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i), iv));
        int32x4_t b = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 4), iv));
        int16x8_t h = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        vst1_s8(q + i, vqmovn_s16(h));
    }
#endif
    for (; i < n; ++i) {
        float r = x[i] * inv;
        r = r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r);
        q[i] = (int8_t)((r + 12582912.0f) - 12582912.0f);
    }
}

/* Quantize a [C][H][W] image into a zero-padded [C][Hp][Wp] int8 buffer (top/left pads PT/PL). */
static void ep_quantize_pad_s8(const float* x, int8_t* q, int C, int H, int W, int PT, int PL, int Hp, int Wp,
                               float scale) {
    if (Hp != H || Wp != W) memset(q, 0, (size_t)C * Hp * Wp);
    for (int c = 0; c < C; ++c)
        for (int h = 0; h < H; ++h)
            ep_quantize_s8(x + ((size_t)c * H + h) * W, q + ((size_t)c * Hp + h + PT) * Wp + PL, W, scale);
}

/* int8 im2row over a padded image: rows[n][kp] for every output pixel n, K = C*KH*KW values, zeros to kp. */
static void ep_im2row_s8(const int8_t* in, int C, int Hp, int Wp, int KH, int KW, int SH, int SW, int DH, int DW,
                         int OH, int OW, int kp, int8_t* rows) {
    int K = C * KH * KW;
    for (int oh = 0; oh < OH; ++oh)
        for (int ow = 0; ow < OW; ++ow) {
            int8_t* r = rows + (size_t)(oh * OW + ow) * kp;
            for (int c = 0; c < C; ++c)
                for (int kh = 0; kh < KH; ++kh) {
                    const int8_t* src = in + ((size_t)c * Hp + oh * SH + kh * DH) * Wp + ow * SW;
                    if (DW == 1) memcpy(r, src, (size_t)KW);
                    else for (int kw = 0; kw < KW; ++kw) r[kw] = src[kw * DW];
                    r += KW;
                }
            if (kp > K) memset(r, 0, (size_t)(kp - K));
        }
}

/* Four dot products of int8 rows of length kp (a multiple of 16): p with q0..q3. */
static inline void ep_dot4_s8(const int8_t* p, const int8_t* q0, const int8_t* q1, const int8_t* q2,
                              const int8_t* q3, int kp, int32_t* out) {
#ifdef EP_NEON
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
    for (int k = 0; k < kp; k += 16) {
        int8x16_t x = vld1q_s8(p + k);
#if defined(__ARM_FEATURE_DOTPROD)
        a0 = vdotq_s32(a0, x, vld1q_s8(q0 + k));
        a1 = vdotq_s32(a1, x, vld1q_s8(q1 + k));
        a2 = vdotq_s32(a2, x, vld1q_s8(q2 + k));
        a3 = vdotq_s32(a3, x, vld1q_s8(q3 + k));
#else
        /* widening multiply to int16, pairwise add-accumulate into int32: no int16 overflow */
        int8x16_t y0 = vld1q_s8(q0 + k), y1 = vld1q_s8(q1 + k), y2 = vld1q_s8(q2 + k), y3 = vld1q_s8(q3 + k);
        int8x8_t xl = vget_low_s8(x), xh = vget_high_s8(x);
        a0 = vpadalq_s16(vpadalq_s16(a0, vmull_s8(xl, vget_low_s8(y0))), vmull_s8(xh, vget_high_s8(y0)));
        a1 = vpadalq_s16(vpadalq_s16(a1, vmull_s8(xl, vget_low_s8(y1))), vmull_s8(xh, vget_high_s8(y1)));
        a2 = vpadalq_s16(vpadalq_s16(a2, vmull_s8(xl, vget_low_s8(y2))), vmull_s8(xh, vget_high_s8(y2)));
        a3 = vpadalq_s16(vpadalq_s16(a3, vmull_s8(xl, vget_low_s8(y3))), vmull_s8(xh, vget_high_s8(y3)));
#endif
    }
    vst1q_s32(out, vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3)));
#elif defined(EP_X86_AVX2)
    /* host build on x86: sign-extend to int16 and multiply-add pairs into int32 (vpmaddwd) */
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int k = 0; k < kp; k += 16) {
        __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + k)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q0 + k)))));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q1 + k)))));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q2 + k)))));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q3 + k)))));
    }
    __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    _mm_storeu_si128((__m128i*)out, r);
#else
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int k = 0; k < kp; ++k) {
        int32_t a = p[k];
        s0 += a * q0[k]; s1 += a * q1[k]; s2 += a * q2[k]; s3 += a * q3[k];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
#endif
}

/* Requantize one row of int32 sums: v = acc * s + b, activation, optional fake quantization to out_scale
   (round half to even with the 1.5 * 2^23 trick, which vectorizes where nearbyintf does not). */
static void ep_requant_row(const int32_t* acc, int n, float s, float b, int act, float p0, float p1,
                           float out_scale, int qmin, int qmax, float* out, int stride) {
    float lo = act == EP_ACT_RELU ? 0.0f : act == EP_ACT_CLIP ? p0 : -INFINITY;
    float hi = act == EP_ACT_CLIP ? p1 : INFINITY;
    int simple = act == EP_ACT_NONE || act == EP_ACT_RELU || act == EP_ACT_CLIP;
    float inv = out_scale > 0.0f ? 1.0f / out_scale : 0.0f;
    float qlo = (float)qmin, qhi = (float)qmax;
    for (int t = 0; t < n; ++t) {
        float v = (float)acc[t] * s + b;
        if (simple) v = v < lo ? lo : (v > hi ? hi : v);
        else v = ep_act1(v, act, p0, p1);
        if (out_scale > 0.0f) {
            float r = v * inv;
            r = r < qlo ? qlo : (r > qhi ? qhi : r);
            r = (r + 12582912.0f) - 12582912.0f;
            v = r * out_scale;
        }
        out[(size_t)t * stride] = v;
    }
}

/* out[i*ldo_i + j*ldo_j] = requant(dot(P[i], Q[j])) for P [I][kp] (weights) and Q [J][kp] (activations):
   v = acc * scale[i] + bias[i], activation, then an optional fake quantization to out_scale.
   accbuf holds J int32 sums. */
static void ep_gemm_s8(int I, int J, int kp, const int8_t* P, const int8_t* Q, const float* scale,
                       const float* bias, float* out, int ldo_i, int ldo_j, int act, float p0, float p1,
                       float out_scale, int qmin, int qmax, int32_t* accbuf) {
    for (int i = 0; i < I; ++i) {
        const int8_t* p = P + (size_t)i * kp;
        int j = 0;
        for (; j + 4 <= J; j += 4) {
            const int8_t* q = Q + (size_t)j * kp;
            ep_dot4_s8(p, q, q + kp, q + 2 * kp, q + 3 * kp, kp, accbuf + j);
        }
        if (j < J) {
            int32_t tmp[4];
            const int8_t* q = Q + (size_t)j * kp;
            int n = J - j;
            ep_dot4_s8(p, q, q + (n > 1 ? kp : 0), q + (n > 2 ? 2 * kp : 0), q, kp, tmp);
            for (int t = 0; t < n; ++t) accbuf[j + t] = tmp[t];
        }
        ep_requant_row(accbuf, J, scale[i], bias ? bias[i] : 0.0f, act, p0, p1, out_scale, qmin, qmax,
                       out + (size_t)i * ldo_i, ldo_j);
    }
}
