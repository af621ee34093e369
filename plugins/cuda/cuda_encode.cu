/*
 * cuda_encode.cu — the encode stage: vectors → sign bits of the mapping MLP.
 *
 * A block runs a tile of up to TILE rows (tokens, across sequences) of one MLP head through every
 * layer. The head's parameters (cu_mlp: one contiguous block per head) are copied to shared memory
 * with 16-byte asynchronous copies, one commit group per layer, so layer 0 computes while the later
 * layers still arrive; the activations stay in shared memory. Where the parameters do not fit, the
 * block reads them from global memory instead (the same code, another pointer).
 *
 * A layer's outputs are padded to whole warps; thread (slice s, output o) sums the inputs of its
 * slice for every row of the tile (each weight read once per tile, 4 inputs per shared-memory
 * read), a second pass adds the slices and the bias and applies SiLU, or, after the last layer,
 * packs the signs 32 at a time with a warp ballot.
 *
 * One launch can run two jobs (the new keys and the queries of a decode step): the blocks of job 0
 * come first. Where a block per (head, tile of ≤ 16 rows) fits one wave (the decode step up to batch 16
 * or so) the launch goes to the row kernel instead (cuda_encode_row.cu; HASHATTN_CUDA_ENCODE_ROWS=1
 * sends every launch whose MLP fits it there, =0 none, for tests and comparisons).
 */
#include "cuda_encode.cuh"

typedef struct encode_params {
    encode_job job[2];
    int32_t jobs;
    bool staged;           /**< parameters copied to shared memory    */
    int64_t param_floats;  /**< shared floats reserved for them        */
    int32_t act_stride;    /**< floats per row of an activation buffer (a multiple of 4) */
    int32_t red_stride;    /**< floats per row of the partial-sum buffer (slices × padded outputs ≤ it) */
} encode_params;

/* What a launch's shared memory is made of (see encode_layout). */
typedef struct encode_smem_layout {
    int64_t param_floats;
    int32_t act_stride;
    int32_t red_stride;
} encode_smem_layout;

static __host__ __device__ __forceinline__ int32_t round_up(int32_t x, int32_t to)
{
    return (x + to - 1) / to * to;
}

/** Outputs of layer l padded to whole warps (the last layer: every bit of every code word). */
static __host__ __device__ __forceinline__ int32_t padded_outputs(const int32_t *dims, int32_t depth, int32_t l,
                                                                  int32_t words)
{
    int32_t o = round_up(dims[l + 1], 32);
    return l == depth - 1 && words * 32 > o ? words * 32 : o;
}

template <int TILE>
static __global__ void __launch_bounds__(CU_ENCODE_THREADS, 1) encode_kernel(const encode_params p)
{
    extern __shared__ __align__(16) float smem[];
    __shared__ int64_t row_t[TILE];   /* token of each row of the tile; -1 = none */
    __shared__ int32_t row_b[TILE];
    float *param_s = smem;
    float *act_a = smem + (p.staged ? p.param_floats : 0);
    float *act_b = act_a + TILE * p.act_stride;
    float *red = act_b + TILE * p.act_stride;
    const int tid = threadIdx.x, lane = tid & 31;
    const int64_t total = encode_items(p.job, p.jobs);
    cu_let_next_grid_start();

    for (int64_t item = blockIdx.x; item < total; item += gridDim.x) {
        int64_t local;
        const encode_job &J = encode_item(p.job, item, &local);
        int64_t tile;
        const int32_t m = (int32_t)encode_div(local, J.tiles, &tile);
        const float *params = J.params + (int64_t)m * J.head_floats;

        __syncthreads(); /* the previous item is done with shared memory */
        if (p.staged) {
            /* 32-bit offsets (staged: a head's floats fit shared memory), pointers stepped per copy */
            const int stride = 4 * (int)blockDim.x;
            for (int l = 0; l < J.depth; l++) {
                const int from = (int)J.w_off[l] + 4 * tid;
                const int to = (int)(l + 1 < J.depth ? J.w_off[l + 1] : J.head_floats);
                const float *src = params + from;
                float *dst = param_s + from;
                for (int i = from; i < to; i += stride, src += stride, dst += stride)
                    copy16_async(dst, src);
                copy_commit();
            }
        }
        /* the parameters (constant) are on their way while the stream's previous kernel finishes;
         * the inputs, lengths and code rows are touched only after it */
        cu_wait_prior_grids();
        /* the tile's rows: row ρ is token j = ρ % count of sequence ρ / count */
        if (tid < TILE) {
            int64_t t;
            int32_t b;
            encode_row_token(J, tile * TILE + tid, &t, &b);
            row_t[tid] = t;
            row_b[tid] = b;
        }
        __syncthreads();
        const size_t in_elem = ha_elem_size(J.in.dtype);
        const int32_t in_head = m / J.per_in_head, d0 = J.dims[0];
        for (int e = tid; e < TILE * d0; e += blockDim.x) {
            const int r = e / d0, k = e % d0;
            act_a[r * p.act_stride + k] =
                row_t[r] >= 0 ? cu_load_f32(cu_row(J.in, in_elem, row_b[r], in_head, row_t[r]), J.in.dtype, k) : 0.0f;
        }

        float *x = act_a, *y = act_b;
        for (int l = 0; l < J.depth; l++) {
            const int I = J.dims[l], O = J.dims[l + 1];
            const int OP = padded_outputs(J.dims, J.depth, l, J.words);
            const bool last = l == J.depth - 1;
            if (p.staged)
                copy_wait(J.depth - 1 - l);
            __syncthreads(); /* x complete, layer l's parameters arrived */
            const float *W = (p.staged ? param_s : params) + J.w_off[l];
            const float *bias = (p.staged ? param_s : params) + J.b_off[l];

            /* partial sums: slice s of the inputs (a multiple of 4 of them) for output o */
            const int slices = OP >= (int)blockDim.x ? 1 : (int)blockDim.x / OP;
            const int per_slice = round_up((I + slices - 1) / slices, 4);
            for (int e = tid; e < slices * OP; e += blockDim.x) {
                const int s = e / OP, o = e % OP;
                float acc[TILE];
#pragma unroll
                for (int r = 0; r < TILE; r++)
                    acc[r] = 0.0f;
                if (o < O) {
                    const int k0 = s * per_slice, k1 = k0 + per_slice < I ? k0 + per_slice : I;
                    int k = k0;
                    /* a pointer stepped by 4 rows (no 64-bit index arithmetic per weight); for one-row
                     * tiles unrolled so that the shared-memory loads of several steps are in flight
                     * before their sums (longer tiles have loads enough, and lose to the registers) */
                    const float *wk = W + (int64_t)k0 * O + o;
#pragma unroll(TILE == 1 ? 4 : 1)
                    for (; k + 4 <= k1; k += 4, wk += 4 * O) {
                        const float w0 = wk[0], w1 = wk[O], w2 = wk[2 * O], w3 = wk[3 * O];
#pragma unroll
                        for (int r = 0; r < TILE; r++) {
                            const float4 xv = *(const float4 *)(x + r * p.act_stride + k);
                            acc[r] = fmaf(xv.x, w0, fmaf(xv.y, w1, fmaf(xv.z, w2, fmaf(xv.w, w3, acc[r]))));
                        }
                    }
                    for (; k < k1; k++) {
                        const float w = W[(int64_t)k * O + o];
#pragma unroll
                        for (int r = 0; r < TILE; r++)
                            acc[r] = fmaf(x[r * p.act_stride + k], w, acc[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < TILE; r++)
                    red[(s * TILE + r) * OP + o] = acc[r];
            }
            __syncthreads();

            /* the slices summed with the bias: SiLU into y, or the signs of the last layer */
            for (int e = tid; e < TILE * OP; e += blockDim.x) {
                const int r = e / OP, o = e % OP;
                float v = 0.0f;
                if (o < O) {
                    v = bias[o];
                    for (int s = 0; s < slices; s++)
                        v += red[(s * TILE + r) * OP + o];
                }
                if (!last) {
                    if (o < O)
                        y[r * p.act_stride + o] = encode_silu(v);
                    continue;
                }
                /* a warp holds 32 consecutive outputs of one row (OP and blockDim are multiples of 32) */
                const unsigned word = __ballot_sync(0xffffffffu, o < O && v > 0.0f);
                if (lane == 0 && row_t[r] >= 0 && (o >> 5) < J.words)
                    ((uint32_t *)cu_row(J.out, sizeof(uint32_t), row_b[r], m, row_t[r]))[o >> 5] = word;
            }
            float *swap = x;
            x = y;
            y = swap;
        }
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

static encode_smem_layout encode_layout(const cu_mlp *a, const cu_mlp *b, int32_t words)
{
    encode_smem_layout L = {0, 0, 0};
    const cu_mlp *mlps[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        const cu_mlp *m = mlps[i];
        if (!m)
            continue;
        L.param_floats = m->head_floats > L.param_floats ? m->head_floats : L.param_floats;
        L.act_stride = round_up(m->widest_input, 4) > L.act_stride ? round_up(m->widest_input, 4) : L.act_stride;
        for (int32_t l = 0; l < m->depth; l++) {
            const int32_t op = padded_outputs(m->dims, m->depth, l, words);
            /* slices × OP ≤ max(threads, OP) */
            const int32_t need = op > CU_ENCODE_THREADS ? op : CU_ENCODE_THREADS;
            L.red_stride = need > L.red_stride ? need : L.red_stride;
        }
    }
    return L;
}

static size_t layout_bytes(const encode_smem_layout &L, int32_t tile, bool staged)
{
    return ((staged ? (size_t)L.param_floats : 0) + 2 * (size_t)tile * (size_t)L.act_stride +
            (size_t)tile * (size_t)L.red_stride) * sizeof(float);
}

size_t cu_encode_smem(const cu_mlp *mlp, int32_t tile, bool staged)
{
    /* the widest code a plan may ask of this MLP: every bit of its last layer */
    const int32_t words = (mlp->dims[mlp->depth] + 31) / 32;
    return layout_bytes(encode_layout(mlp, NULL, words), tile, staged);
}

ha_status cu_encode_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(encode_kernel<1>, ctx, "cuda init: encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_kernel<4>, ctx, "cuda init: encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_kernel<8>, ctx, "cuda init: encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_kernel<CU_ENCODE_MAX_TILE>, ctx, "cuda init: encode kernel");
    return st != HA_OK ? st : cu_encode_rows_prepare(ctx);
}

ha_status cu_encode_job(const cu_plan *plan, const ha_encode_args *a, encode_job *J, bool *empty)
{
    const cu_mlp *mlp = (const cu_mlp *)a->mlp;
    if (!mlp || a->in.heads < 1 || mlp->heads % a->in.heads != 0 || a->in.dim < mlp->dims[0] || a->out.dim < 1 ||
        (int64_t)a->out.dim * 32 < mlp->dims[mlp->depth] || a->out.heads != mlp->heads)
        return cu_fail(HA_ERR_SHAPE, "cuda encode: MLP heads %d, input heads %d, input dim %d, out heads %d, out words "
                       "%d do not fit together", mlp ? mlp->heads : 0, a->in.heads, a->in.dim, a->out.heads,
                       a->out.dim);
    if (a->batch > plan->desc.max_batch)
        return cu_fail(HA_ERR_STATE, "cuda encode: batch %d exceeds the plan's %d", a->batch, plan->desc.max_batch);
    memset(J, 0, sizeof *J);
    *empty = a->batch <= 0 || a->count <= 0;
    if (*empty)
        return HA_OK;
    J->in = a->in;
    J->out = a->out;
    J->params = mlp->storage;
    J->head_floats = mlp->head_floats;
    J->depth = mlp->depth;
    for (int i = 0; i <= mlp->depth; i++)
        J->dims[i] = mlp->dims[i];
    for (int i = 0; i < mlp->depth; i++) {
        J->w_off[i] = mlp->w_off[i];
        J->b_off[i] = mlp->b_off[i];
    }
    if (mlp->row_storage) {
        J->row_params = mlp->row_storage;
        J->row_head_floats = (int32_t)mlp->row_head_floats;
        for (int i = 0; i < mlp->depth; i++) {
            J->row_w_off[i] = (int32_t)mlp->row_w_off[i];
            J->row_b_off[i] = (int32_t)mlp->row_b_off[i];
        }
    }
    J->heads = mlp->heads;
    J->per_in_head = mlp->heads / a->in.heads;
    J->words = a->out.dim;
    J->batch = a->batch;
    J->max_tokens = plan->desc.max_tokens;
    J->count = (int32_t)(a->count < J->max_tokens ? a->count : J->max_tokens);
    J->end = a->end;
    J->rows = (int64_t)J->batch * J->count;
    return HA_OK;
}

/* Launches the non-empty jobs among a (may be NULL) and b in one kernel. */
static ha_status launch(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *a, const ha_encode_args *b)
{
    encode_params p;
    memset(&p, 0, sizeof p);
    const ha_encode_args *args[2] = {a, b};
    const cu_mlp *mlps[2] = {NULL, NULL};
    int32_t words = 1;
    int64_t most_rows = 0;
    for (int i = 0; i < 2; i++) {
        if (!args[i])
            continue;
        bool empty = true;
        ha_status st = cu_encode_job(plan, args[i], &p.job[p.jobs], &empty);
        if (st != HA_OK)
            return st;
        if (empty)
            continue;
        mlps[p.jobs] = (const cu_mlp *)args[i]->mlp;
        words = args[i]->out.dim > words ? args[i]->out.dim : words;
        most_rows = p.job[p.jobs].rows > most_rows ? p.job[p.jobs].rows : most_rows;
        p.jobs++;
    }
    if (p.jobs == 0)
        return HA_OK;
    cudaStream_t stream = (cudaStream_t)(b ? b->stream : a->stream);
    /* the row kernel (weights in registers) while a block per (head, tile of ≤ 16 rows) fits one wave
     * (one block per SM): the decode step at batch 1 (a row per block) and batches of a few new tokens
     * per sequence; HASHATTN_CUDA_ENCODE_ROWS=1 takes it wherever the MLP fits (16 rows a block at most,
     * several waves where needed) */
    bool rows_fit = true;
    for (int i = 0; i < p.jobs; i++)
        rows_fit = rows_fit && cu_encode_row_fits(&p.job[i]);
    if (rows_fit && ctx->encode_rows != 0) {
        int32_t row_tile = ctx->encode_rows > 1 ? ctx->encode_rows : cu_encode_rows_tile(p.job, p.jobs, ctx->sm_count);
        if (row_tile == 0 && ctx->encode_rows == 1)
            row_tile = CU_ENCODE_ROW_MAX_TILE;
        if (row_tile > 0)
            return cu_encode_rows_launch(ctx, p.job, p.jobs, row_tile, stream);
    }

    /* rows per block: enough for the batch, but tiles of 8 while their blocks still fit one wave (a
     * block's arithmetic grows with its rows; a block holds a whole head's parameters, so one block
     * per SM); fewer where the activations would not fit (a tile of one always fits: mlp_upload
     * checked) */
    const encode_smem_layout L = encode_layout(mlps[0], mlps[1], words);
    int64_t heads = 0;
    for (int i = 0; i < p.jobs; i++)
        heads += p.job[i].heads;
    int32_t tile = most_rows <= 1   ? 1
                 : most_rows <= 4   ? 4
                 : most_rows <= 8 || heads * ((most_rows + 7) / 8) <= ctx->sm_count ? 8
                                    : CU_ENCODE_MAX_TILE;
    while (tile > 1 && layout_bytes(L, tile, false) > ctx->smem_optin)
        tile = tile > 8 ? 8 : tile > 4 ? 4 : 1;
    p.staged = layout_bytes(L, tile, true) <= ctx->smem_optin;
    p.param_floats = L.param_floats;
    p.act_stride = L.act_stride;
    p.red_stride = L.red_stride;
    const size_t smem = layout_bytes(L, tile, p.staged);
    if (smem > ctx->smem_optin) /* two MLPs of different widths, each of which fits alone */
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda encode: %zu bytes of shared memory needed, %zu allowed", smem,
                       ctx->smem_optin);
    int64_t blocks = 0;
    for (int i = 0; i < p.jobs; i++) {
        encode_job *J = &p.job[i];
        J->tiles = (J->rows + tile - 1) / tile;
        J->blocks = (int64_t)J->heads * J->tiles;
        blocks += J->blocks;
    }
    void (*kernel)(const encode_params) = tile == 1   ? encode_kernel<1>
                                          : tile == 4 ? encode_kernel<4>
                                          : tile == 8 ? encode_kernel<8>
                                                      : encode_kernel<CU_ENCODE_MAX_TILE>;
    return cu_launch(ctx, kernel, cu_grid(blocks), CU_ENCODE_THREADS, smem, stream, 1, "cuda encode: kernel launch", p);
}

ha_status cu_encode(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *a)
{
    return launch(ctx, plan, NULL, a);
}

ha_status cu_encode_pair(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *keys,
                         const ha_encode_args *queries)
{
    return launch(ctx, plan, keys, queries);
}
