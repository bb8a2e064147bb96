/* rng.h: small deterministic random numbers.
 *
 * st_rng is a xoshiro256** stream (for sampling, shuffles and dropout); its
 * whole state is four words so a checkpoint can store it. st_normal_fill is
 * counter-based: each value depends only on (key, index), which is what
 * makes initialisation identical on every process grid.
 */
#ifndef ST_RNG_H
#define ST_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } st_rng;

void st_rng_seed(st_rng *r, uint64_t seed);
uint64_t st_rng_next(st_rng *r);
/* Uniform in [0, 1). */
double st_rng_uniform(st_rng *r);
/* Uniform integer in [0, n). */
uint64_t st_rng_below(st_rng *r, uint64_t n);

/* SplitMix64's output function: a bijective 64-bit mix (inline: hot loops
 * such as checkpoint checksums call it per element). */
static inline uint64_t st_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t st_hash_str(const char *s);

/* out[j] = sd * Z(key, first + j) for j < n: Z(key, i) is a standard normal
 * draw that depends only on (key, i), so a range filled in pieces, on any
 * number of threads or ranks, holds the same values as filled whole.
 * Ziggurat (Marsaglia & Tsang 2000, 256 layers) on one SplitMix64 output per
 * index, its layer, sign and magnitude taken from separate bits (Doornik
 * 2005); about 99% of draws are a table look-up and a multiply (vectorised),
 * the rest finish from a xoshiro stream seeded by (key, i). Serial: callers
 * split large ranges over threads. */
void st_normal_fill(float *out, size_t n, uint64_t key, uint64_t first, float sd);
/* Uniform draw in [0, 1) determined by (key, index): a counter-based stream
 * (draw `index` of stream `key` needs no state, so a sampler keyed by what it
 * samples gives the same draws on any grid and after a resume). */
double st_hash_uniform(uint64_t key, uint64_t index);

#endif
