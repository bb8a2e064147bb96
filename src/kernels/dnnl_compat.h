/* dnnl_compat.h: the oneDNN calls kernels.c makes, spelled once for oneDNN 2.x
 * (Debian bookworm's 2.6) and 3.x (clusters; Debian trixie's 3.7).
 *
 * 2.x builds a primitive descriptor from an operation descriptor
 * (dnnl_matmul_desc_init + dnnl_primitive_desc_create) and memory descriptors
 * are structs the caller owns; 3.x dropped operation descriptors
 * (dnnl_matmul_primitive_desc_create takes the memory descriptors directly)
 * and memory descriptors became handles that must be destroyed. Here:
 *   st_md            a memory descriptor: declare with ST_MD_NONE, fill with
 *                    st_md_strided, release with st_md_free (a no-op on 2.x);
 *                    ST_MD(x) is what the oneDNN functions take.
 *   st_pd_*          one primitive-descriptor constructor per operation.
 *   st_attr_scale    a common scale alpha on a matmul's product. 2.x: output
 *                    scales, which also scale the bias (ST_DNNL_BIAS_SCALED);
 *                    3.x: a source scale, given at execution as the argument
 *                    ST_DNNL_ARG_ALPHA (a one-float memory), bias unscaled.
 * Everything else kernels.c calls has the same spelling in both.
 */
#ifndef ST_DNNL_COMPAT_H
#define ST_DNNL_COMPAT_H

#include <stdint.h>
#include <string.h>

#include <dnnl.h>
#include <dnnl_debug.h>

#if DNNL_VERSION_MAJOR >= 3

typedef dnnl_memory_desc_t st_md; /* a handle; NULL when unset */
typedef const_dnnl_memory_desc_t st_md_query; /* owned by its primitive descriptor */
#define ST_MD_NONE NULL
#define ST_MD(x) (x)
#define ST_DNNL_BIAS_SCALED 0
#define ST_DNNL_ARG_ALPHA (DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC)

static inline void st_md_free(st_md *md)
{
    if (*md) dnnl_memory_desc_destroy(*md);
    *md = NULL;
}

static inline dnnl_status_t st_md_strided(st_md *md, int nd, const int64_t *dims,
                                          dnnl_data_type_t dt, const int64_t *strides)
{
    dnnl_dims_t d, s;
    memcpy(d, dims, (size_t)nd * sizeof *dims);
    memcpy(s, strides, (size_t)nd * sizeof *strides);
    st_md_free(md);
    return dnnl_memory_desc_create_with_strides(md, nd, d, dt, s);
}

static inline dnnl_status_t st_pd_matmul(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                         st_md a, st_md b, const st_md *bias, st_md c,
                                         const_dnnl_primitive_attr_t attr)
{
    return dnnl_matmul_primitive_desc_create(pd, eng, a, b, bias ? *bias : NULL, c, attr);
}

static inline dnnl_status_t st_attr_scale(dnnl_primitive_attr_t attr, float alpha)
{
    (void)alpha; /* given at execution */
    return dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_SRC, 0);
}

static inline dnnl_status_t st_post_ops_sum(dnnl_post_ops_t po)
{
    return dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef);
}

static inline dnnl_status_t st_pd_layernorm_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                                st_md data, st_md stat, float eps,
                                                unsigned flags, const_dnnl_primitive_attr_t attr)
{
    return dnnl_layer_normalization_forward_primitive_desc_create(
        pd, eng, dnnl_forward_training, data, data, stat, eps, flags, attr);
}

static inline dnnl_status_t st_pd_layernorm_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                                st_md data, st_md stat, float eps,
                                                unsigned flags, const_dnnl_primitive_desc_t hint,
                                                const_dnnl_primitive_attr_t attr)
{
    return dnnl_layer_normalization_backward_primitive_desc_create(
        pd, eng, dnnl_backward, data, data, data, stat, eps, flags, hint, attr);
}

static inline dnnl_status_t st_pd_eltwise_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              dnnl_alg_kind_t alg, st_md md, float alpha,
                                              const_dnnl_primitive_attr_t attr)
{
    return dnnl_eltwise_forward_primitive_desc_create(pd, eng, dnnl_forward_training, alg, md,
                                                      md, alpha, 0.0f, attr);
}

static inline dnnl_status_t st_pd_eltwise_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              dnnl_alg_kind_t alg, st_md md, float alpha,
                                              const_dnnl_primitive_desc_t hint,
                                              const_dnnl_primitive_attr_t attr)
{
    return dnnl_eltwise_backward_primitive_desc_create(pd, eng, alg, md, md, md, alpha, 0.0f,
                                                       hint, attr);
}

static inline dnnl_status_t st_pd_binary(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                         dnnl_alg_kind_t alg, st_md md,
                                         const_dnnl_primitive_attr_t attr)
{
    return dnnl_binary_primitive_desc_create(pd, eng, alg, md, md, md, attr);
}

static inline dnnl_status_t st_pd_softmax_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              st_md md, int axis,
                                              const_dnnl_primitive_attr_t attr)
{
    return dnnl_softmax_forward_primitive_desc_create(pd, eng, dnnl_forward_training,
                                                      dnnl_softmax_accurate, md, md, axis, attr);
}

static inline dnnl_status_t st_pd_softmax_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              st_md md, int axis,
                                              const_dnnl_primitive_desc_t hint,
                                              const_dnnl_primitive_attr_t attr)
{
    return dnnl_softmax_backward_primitive_desc_create(pd, eng, dnnl_softmax_accurate, md, md,
                                                       md, axis, hint, attr);
}

#else /* oneDNN 2.x */

typedef dnnl_memory_desc_t st_md; /* a struct; all zero when unset */
typedef const dnnl_memory_desc_t *st_md_query;
#define ST_MD_NONE {0}
#define ST_MD(x) (&(x))
#define ST_DNNL_BIAS_SCALED 1
#define ST_DNNL_ARG_ALPHA 0 /* no execution argument: the scale is in the attributes */

static inline void st_md_free(st_md *md) { (void)md; }

static inline dnnl_status_t st_md_strided(st_md *md, int nd, const int64_t *dims,
                                          dnnl_data_type_t dt, const int64_t *strides)
{
    dnnl_dims_t d, s;
    memcpy(d, dims, (size_t)nd * sizeof *dims);
    memcpy(s, strides, (size_t)nd * sizeof *strides);
    return dnnl_memory_desc_init_by_strides(md, nd, d, dt, s);
}

static inline dnnl_status_t st_pd_matmul(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                         st_md a, st_md b, const st_md *bias, st_md c,
                                         const_dnnl_primitive_attr_t attr)
{
    dnnl_matmul_desc_t desc;
    dnnl_status_t s = dnnl_matmul_desc_init(&desc, &a, &b, bias, &c);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, NULL);
}

static inline dnnl_status_t st_attr_scale(dnnl_primitive_attr_t attr, float alpha)
{
    return dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
}

static inline dnnl_status_t st_post_ops_sum(dnnl_post_ops_t po)
{
    return dnnl_post_ops_append_sum(po, 1.0f);
}

static inline dnnl_status_t st_pd_layernorm_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                                st_md data, st_md stat, float eps,
                                                unsigned flags, const_dnnl_primitive_attr_t attr)
{
    dnnl_layer_normalization_desc_t desc;
    dnnl_status_t s = dnnl_layer_normalization_forward_desc_init(&desc, dnnl_forward_training,
                                                                 &data, &stat, eps, flags);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, NULL);
}

static inline dnnl_status_t st_pd_layernorm_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                                st_md data, st_md stat, float eps,
                                                unsigned flags, const_dnnl_primitive_desc_t hint,
                                                const_dnnl_primitive_attr_t attr)
{
    dnnl_layer_normalization_desc_t desc;
    dnnl_status_t s = dnnl_layer_normalization_backward_desc_init(&desc, dnnl_backward, &data,
                                                                  &data, &stat, eps, flags);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, hint);
}

static inline dnnl_status_t st_pd_eltwise_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              dnnl_alg_kind_t alg, st_md md, float alpha,
                                              const_dnnl_primitive_attr_t attr)
{
    dnnl_eltwise_desc_t desc;
    dnnl_status_t s = dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_training, alg, &md,
                                                     alpha, 0.0f);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, NULL);
}

static inline dnnl_status_t st_pd_eltwise_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              dnnl_alg_kind_t alg, st_md md, float alpha,
                                              const_dnnl_primitive_desc_t hint,
                                              const_dnnl_primitive_attr_t attr)
{
    dnnl_eltwise_desc_t desc;
    dnnl_status_t s = dnnl_eltwise_backward_desc_init(&desc, alg, &md, &md, alpha, 0.0f);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, hint);
}

static inline dnnl_status_t st_pd_binary(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                         dnnl_alg_kind_t alg, st_md md,
                                         const_dnnl_primitive_attr_t attr)
{
    dnnl_binary_desc_t desc;
    dnnl_status_t s = dnnl_binary_desc_init(&desc, alg, &md, &md, &md);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, NULL);
}

static inline dnnl_status_t st_pd_softmax_fwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              st_md md, int axis,
                                              const_dnnl_primitive_attr_t attr)
{
    dnnl_softmax_desc_t desc;
    dnnl_status_t s = dnnl_softmax_forward_desc_init(&desc, dnnl_forward_training, &md, axis);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, NULL);
}

static inline dnnl_status_t st_pd_softmax_bwd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                                              st_md md, int axis,
                                              const_dnnl_primitive_desc_t hint,
                                              const_dnnl_primitive_attr_t attr)
{
    dnnl_softmax_desc_t desc;
    dnnl_status_t s = dnnl_softmax_backward_desc_init(&desc, &md, &md, axis);
    if (s != dnnl_success) return s;
    return dnnl_primitive_desc_create(pd, &desc, attr, eng, hint);
}

#endif

#endif
