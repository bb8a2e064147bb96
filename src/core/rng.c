/* rng.c: xoshiro256** and counter-based normal draws (a ziggurat). */
#include "core/rng.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

void st_rng_seed(st_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        x = st_splitmix64(x);
        r->s[i] = x;
    }
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t st_rng_next(st_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double st_rng_uniform(st_rng *r) { return (double)(st_rng_next(r) >> 11) * 0x1.0p-53; }

uint64_t st_rng_below(st_rng *r, uint64_t n)
{
    /* rejection sampling keeps the draw unbiased */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = st_rng_next(r); while (x >= limit);
    return x % n;
}

uint64_t st_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* ---- counter-based normal draws: the ziggurat ------------------------------ */

/* 256 layers of equal area V under f(x) = exp(-x^2/2), x >= 0; the base layer
 * ends at R and carries the tail beyond it (Marsaglia & Tsang's constants for
 * 256 layers, as numpy uses). Magnitudes are 52-bit integers u: layer i's
 * point is x = u * w[i]; it lies under the curve for sure when u < k[i]; f[i]
 * is f at layer i's outer edge. */
#define ZIG_R 3.6541528853610088
#define ZIG_V 4.92867323399e-3
#define ZIG_M 0x1.0p52
#define ZIG_GOLDEN 0x9e3779b97f4a7c15ULL

static struct {
    uint64_t k[256];
    double w[256], f[256];
} zig;
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;

/* Marsaglia & Tsang's zigset, in 52 bits */
static void zig_setup(void)
{
    double dn = ZIG_R, tn = dn, q = ZIG_V / exp(-0.5 * dn * dn);
    zig.k[0] = (uint64_t)(dn / q * ZIG_M);
    zig.k[1] = 0;
    zig.w[0] = q / ZIG_M;
    zig.w[255] = dn / ZIG_M;
    zig.f[0] = 1.0;
    zig.f[255] = exp(-0.5 * dn * dn);
    for (int i = 254; i >= 1; i--) {
        dn = sqrt(-2.0 * log(ZIG_V / dn + exp(-0.5 * dn * dn)));
        zig.k[i + 1] = (uint64_t)(dn / tn * ZIG_M);
        tn = dn;
        zig.f[i] = exp(-0.5 * dn * dn);
        zig.w[i] = dn / ZIG_M;
    }
}

/* The one 64-bit hash of index i: a SplitMix64 stream started at key. */
static inline uint64_t zig_bits(uint64_t key, uint64_t i) { return st_splitmix64(key + i * ZIG_GOLDEN); }

/* The draw of index i when its fast path failed (wedge, tail, or a retry). */
static double zig_slow(uint64_t key, uint64_t i)
{
    st_rng r;
    st_rng_seed(&r, st_splitmix64(key ^ 0x6e6f726d616c2121ULL) ^ st_splitmix64(i));
    for (uint64_t h = zig_bits(key, i);; h = st_rng_next(&r)) {
        const int layer = (int)(h & 0xff);
        const double sign = h & 0x100 ? -1.0 : 1.0;
        const uint64_t u = h >> 12;
        const double x = (double)u * zig.w[layer];
        if (u < zig.k[layer]) return sign * x;
        if (layer == 0) { /* beyond R: Marsaglia's tail method */
            double xx, yy;
            do {
                xx = -log(1.0 - st_rng_uniform(&r)) / ZIG_R;
                yy = -log(1.0 - st_rng_uniform(&r));
            } while (yy + yy < xx * xx);
            return sign * (ZIG_R + xx);
        }
        if (zig.f[layer] + st_rng_uniform(&r) * (zig.f[layer - 1] - zig.f[layer]) < exp(-0.5 * x * x))
            return sign * x;
    }
}

/* The fast path for every element, NaN where it does not decide (chosen
 * with bit masks: a select would be a branch to the vectoriser), then the
 * slow path for those. */
#define NORMAL_FAST_LOOP(out, n, key, first, sd)                                 \
    do {                                                                         \
        _Pragma("omp simd")                                                      \
        for (size_t j_ = 0; j_ < (n); j_++) {                                    \
            const uint64_t h_ = zig_bits((key), (first) + j_);                   \
            const uint64_t l_ = h_ & 0xff, u_ = h_ >> 12;                        \
            const double s_ = (sd) - (double)((h_ >> 8) & 1) * (2 * (sd));       \
            const float x_ = (float)((double)(int64_t)u_ * zig.w[l_] * s_);      \
            const uint32_t ok_ = (uint32_t)0 - (uint32_t)(u_ < zig.k[l_]);       \
            uint32_t b_;                                                         \
            memcpy(&b_, &x_, sizeof b_);                                         \
            b_ = (b_ & ok_) | (0x7fc00000u & ~ok_);                              \
            memcpy(&(out)[j_], &b_, sizeof b_);                                  \
        }                                                                        \
    } while (0)

static void normal_fast_plain(float *out, size_t n, uint64_t key, uint64_t first, double sd)
{
    NORMAL_FAST_LOOP(out, n, key, first, sd);
}

/* AVX-512DQ has the 64-bit multiplies, gathers and conversions the loop
 * needs; the values are the same on either path. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define NORMAL_AVX512 1
__attribute__((target("avx512f,avx512dq"))) static void normal_fast_avx512(float *out, size_t n, uint64_t key,
                                                                           uint64_t first, double sd)
{
    NORMAL_FAST_LOOP(out, n, key, first, sd);
}
#endif

void st_normal_fill(float *out, size_t n, uint64_t key, uint64_t first, float sd)
{
    pthread_once(&zig_once, zig_setup);
#ifdef NORMAL_AVX512
    if (__builtin_cpu_supports("avx512dq")) normal_fast_avx512(out, n, key, first, sd);
    else
#endif
        normal_fast_plain(out, n, key, first, sd);
    for (size_t j = 0; j < n; j++)
        if (isnan(out[j])) out[j] = (float)(sd * zig_slow(key, first + j));
}

double st_hash_uniform(uint64_t key, uint64_t index)
{
    return (double)(st_splitmix64(key ^ st_splitmix64(index)) >> 11) * 0x1.0p-53;
}
