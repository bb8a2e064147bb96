/* rng.c: xoshiro256** and a counter-based normal draw. */
#include "core/rng.h"

#include <math.h>

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

double st_hash_normal(uint64_t key, uint64_t index)
{
    uint64_t a = st_splitmix64(key ^ st_splitmix64(2 * index));
    uint64_t b = st_splitmix64(key ^ st_splitmix64(2 * index + 1));
    double u1 = ((double)(a >> 11) + 0.5) * 0x1.0p-53; /* (0,1) */
    double u2 = (double)(b >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
