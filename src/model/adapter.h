/* adapter.h: the hook through which low-rank adapters (src/model/lora.c) join the
 * linear layers of the model without the model knowing what they are.
 *
 * After every projection's forward the model calls forward(); after its
 * backward, backward(). The arguments are the projection's local input and
 * output on this tp rank, so an adapter follows the layer's tensor-parallel
 * split (see mpi/tp.h):
 *   column-parallel targets (q k v gate up): out (N, OUT_local) holds this
 *     rank's output columns; in backward, dinp (N, IN) holds this rank's
 *     PARTIAL input gradient, which the model all-reduces over tp afterwards.
 *   row-parallel targets (o down): inp (N, IN_local) is this rank's slice of
 *     the input, out (N, OUT) is the full output (already summed over tp);
 *     in backward, dout is the full output gradient and dinp (N, IN_local)
 *     this rank's complete input gradient.
 * The adapter adds its contribution to out / dinp (+=) and accumulates its own
 * parameter gradients. It may run its own tp collectives (tp is given).
 */
#ifndef ST_ADAPTER_H
#define ST_ADAPTER_H

#include <mpi.h>
#include <stdint.h>

#include "core/err.h"

typedef enum { ST_T_Q = 0, ST_T_K, ST_T_V, ST_T_O, ST_T_GATE, ST_T_UP, ST_T_DOWN, ST_T_COUNT } st_target;

typedef struct st_adapter {
    void *ctx;
    /* training = 1 when activations must be kept for backward */
    st_err (*forward)(void *ctx, MPI_Comm tp, int layer, st_target t, float *out, const float *inp,
                      int64_t N, int training);
    st_err (*backward)(void *ctx, MPI_Comm tp, int layer, st_target t, float *dinp, const float *dout,
                       const float *inp, int64_t N);
} st_adapter;

#endif
