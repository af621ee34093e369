/*
 * cuda_encode_row.cuh — the encode of one row by one block, as a device function: the body of the
 * one-row kernel (cuda_encode_row.cu, 16 warps) and of the fused decode step's encode phase
 * (cuda_decode_fused.cu, 8 warps, each taking two warps' share of the outputs in turn); and the layout
 * and reductions that the row kernel's tiles of several rows (cuda_encode_row.cu) share with it.
 *
 * Warp w of the 16-warp layout owns outputs j·16 + w (j < 8) of every layer, lane i the inputs
 * 4i..4i+3; the weights (cu_mlp row_storage: output-major, rows padded to 4 floats) are streamed
 * straight from global memory into registers, 512 contiguous bytes per warp and output, and the dot
 * products are formed with shuffles. With 8 physical warps, warp w runs the 16-warp layout's warps w
 * and w + 8 one after the other ("passes").
 */
#ifndef HA_CUDA_ENCODE_ROW_CUH
#define HA_CUDA_ENCODE_ROW_CUH

#include "cuda_encode.cuh"

#define ROW_WARPS (CU_ENCODE_ROW_THREADS / 32)
#define ROW_SLOTS (CU_ENCODE_ROW_WIDTH / ROW_WARPS) /* outputs per warp and layer */
static_assert(ROW_SLOTS == 8, "halve_slots halves 8 sums three times");
static_assert(CU_ENCODE_ROW_WIDTH == 4 * 32, "a lane holds 4 inputs of a layer");

/* One layer as one lane holds it: the lane's 4 inputs of the warp's output slots, and the bias of the
 * slot the lane holds after reduce_slots. */
struct row_layer {
    float4 w[ROW_SLOTS];
    float bias;
};

/* Output of slot j in warp `warp`; the slot lane `lane` holds after reduce_slots. */
static __device__ __forceinline__ int slot_output(int j, int warp)
{
    return j * ROW_WARPS + warp;
}

static __device__ __forceinline__ int lane_slot(int lane)
{
    return (lane >> 2) & (ROW_SLOTS - 1);
}

/* Issues the loads of layer l of the head at P (row layout) into L; nothing waits for them here. */
static __device__ __forceinline__ void load_layer(const float *P, const encode_job &J, int l, int warp, int lane,
                                                  row_layer &L)
{
    const int I = J.dims[l], O = J.dims[l + 1], KP = (I + 3) & ~3;
    const bool mine = 4 * lane < KP;
    const float *W = P + J.row_w_off[l] + 4 * lane;
#pragma unroll
    for (int j = 0; j < ROW_SLOTS; j++) {
        const int o = slot_output(j, warp);
        L.w[j] = mine && o < O ? __ldg((const float4 *)(W + o * KP)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    const int o = slot_output(lane_slot(lane), warp);
    L.bias = o < O ? __ldg(P + J.row_b_off[l] + o) : 0.0f;
}

/* v[j]: this lane's part of slot j's sum. Returns, in lane l, the sum of slot s = lane_slot(l) over the
 * 8 lanes l ^ {0, 4, 8, …, 28} (the lanes with l's two low bits): each halving step keeps half of the
 * slots and adds the partner lane's part of them, 4 + 2 + 1 shuffles. */
static __device__ __forceinline__ float halve_slots(const float (&v)[ROW_SLOTS], int lane)
{
    const bool h16 = lane & 16, h8 = lane & 8, h4 = lane & 4;
    float u[4], t[2];
#pragma unroll
    for (int i = 0; i < 4; i++)
        u[i] = (h16 ? v[i + 4] : v[i]) + __shfl_xor_sync(0xffffffffu, h16 ? v[i] : v[i + 4], 16);
#pragma unroll
    for (int i = 0; i < 2; i++)
        t[i] = (h8 ? u[i + 2] : u[i]) + __shfl_xor_sync(0xffffffffu, h8 ? u[i] : u[i + 2], 8);
    return (h4 ? t[1] : t[0]) + __shfl_xor_sync(0xffffffffu, h4 ? t[0] : t[1], 4);
}

/* The warp's sum of slot lane_slot(lane), in the 4 lanes 4s..4s+3 of the slot: halve_slots, then 2 more
 * shuffles add the 4 lanes that share a slot. */
static __device__ __forceinline__ float reduce_slots(const float (&v)[ROW_SLOTS], int lane)
{
    const float s = halve_slots(v, lane);
    const float s2 = s + __shfl_xor_sync(0xffffffffu, s, 2);
    return s2 + __shfl_xor_sync(0xffffffffu, s2, 1);
}

/* x with the elements at k + 1.. ≥ I set to 0 (the padding of a row is never read as a value) */
static __device__ __forceinline__ float4 clip_inputs(float4 x, int k, int I)
{
    return make_float4(k < I ? x.x : 0.0f, k + 1 < I ? x.y : 0.0f, k + 2 < I ? x.z : 0.0f, k + 3 < I ? x.w : 0.0f);
}

/* Inputs k..k + 3 of token t of sequence b for MLP head m (0 past the row's end, or where t < 0). */
static __device__ __forceinline__ float4 load_inputs(const encode_job &J, int32_t m, int64_t t, int32_t b, int k)
{
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t >= 0 && k < J.dims[0]) {
        const void *row = cu_row(J.in, ha_elem_size(J.in.dtype), b, m / J.per_in_head, t);
        const int I = J.dims[0];
        x.x = cu_load_f32(row, J.in.dtype, k);
        x.y = k + 1 < I ? cu_load_f32(row, J.in.dtype, k + 1) : 0.0f;
        x.z = k + 2 < I ? cu_load_f32(row, J.in.dtype, k + 2) : 0.0f;
        x.w = k + 3 < I ? cu_load_f32(row, J.in.dtype, k + 3) : 0.0f;
    }
    return x;
}

/*
 * Row rho of job J through MLP head m, its code written to J.out (and word w to code_smem[w] where
 * code_smem is not NULL). Every thread of the block calls it; the block has ROW_WARPS / PASSES warps.
 * Waits for the previous grids (cu_wait_prior_grids) after issuing the first weight loads. act and
 * last_out: the block's shared buffers; the caller puts a barrier between two calls.
 *
 * PASSES 1: layers 0 and 1 are loaded before the wait (the weights are constant), layer l + 2 is
 * issued into layer l's registers as soon as layer l's products are formed. PASSES 2: both passes of
 * layer 0 are loaded before the wait, and a pass's registers take the next layer's weights of that
 * pass as soon as its products are formed.
 */
template <int PASSES>
static __device__ __forceinline__ void encode_row_item(const encode_job &J, int32_t m, int64_t rho,
                                                       float (&act)[2][CU_ENCODE_ROW_WIDTH], float *last_out,
                                                       uint32_t *code_smem)
{
    static_assert(PASSES == 1 || PASSES == 2, "16 or 8 warps");
    constexpr int WARPS = ROW_WARPS / PASSES;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, k = 4 * lane;
    const float *P = J.row_params + (int64_t)m * J.row_head_floats;

    row_layer L[2]; /* PASSES 1: layers l and l + 1; PASSES 2: the two passes of layer l */
    load_layer(P, J, 0, warp, lane, L[0]);
    if (PASSES == 2)
        load_layer(P, J, 0, warp + WARPS, lane, L[1]);
    else if (J.depth > 1)
        load_layer(P, J, 1, warp, lane, L[1]);
    cu_wait_prior_grids();
    int64_t t;
    int32_t b;
    encode_row_token(J, rho, &t, &b);
    float4 x = load_inputs(J, m, t, b, k);

#pragma unroll
    for (int l = 0; l < HA_PLUGIN_MAX_MLP_DEPTH; l++) {
        if (l >= J.depth)
            break;
        if (l > 0) /* layer l - 1's outputs, complete after the barrier that ended it */
            x = k < J.dims[l] ? clip_inputs(*(const float4 *)&act[(l - 1) & 1][k], k, J.dims[l])
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int pass = 0; pass < PASSES; pass++) {
            row_layer &Ly = PASSES == 1 ? L[l & 1] : L[pass];
            const int vwarp = warp + WARPS * pass; /* the warp of the 16-warp layout */
            float v[ROW_SLOTS];
#pragma unroll
            for (int j = 0; j < ROW_SLOTS; j++)
                v[j] = fmaf(x.w, Ly.w[j].w, fmaf(x.z, Ly.w[j].z, fmaf(x.y, Ly.w[j].y, x.x * Ly.w[j].x)));
            const float bias = Ly.bias;
            if (PASSES == 1 && l + 2 < J.depth) /* Ly's registers are free: layer l + 2 arrives during this one */
                load_layer(P, J, l + 2, warp, lane, Ly);
            if (PASSES == 2 && l + 1 < J.depth)
                load_layer(P, J, l + 1, vwarp, lane, Ly);
            const float s = reduce_slots(v, lane) + bias;
            const int o = slot_output(lane_slot(lane), vwarp);
            if ((lane & 3) == 0 && o < J.dims[l + 1]) {
                if (l == J.depth - 1)
                    last_out[o] = s;
                else
                    act[l & 1][o] = encode_silu(s);
            }
        }
        __syncthreads();
    }

    /* bit i of the code is thread i's: one ballot per word (words × 32 is a multiple of 32) */
    if (tid < J.words * 32) {
        const unsigned word = __ballot_sync(0xffffffffu, tid < J.dims[J.depth] && last_out[tid] > 0.0f);
        if (lane == 0 && t >= 0)
            ((uint32_t *)cu_row(J.out, sizeof(uint32_t), b, m, t))[warp] = word;
        if (lane == 0 && code_smem)
            code_smem[warp] = word;
    }
}

#endif /* HA_CUDA_ENCODE_ROW_CUH */
