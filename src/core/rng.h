/* rng.h: small deterministic random numbers.
 *
 * st_rng is a xoshiro256** stream (for sampling, shuffles and dropout); its
 * whole state is four words so a checkpoint can store it. st_hash_normal is a
 * counter-based draw: the value depends only on its inputs, which is what
 * makes initialisation identical on every process grid.
 */
#ifndef ST_RNG_H
#define ST_RNG_H

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
/* Standard normal draw determined by (key, index). */
double st_hash_normal(uint64_t key, uint64_t index);

#endif
