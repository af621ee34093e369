/*
 * lm_kernels_dispatch.c — picks the kernel table for this CPU once: AVX-512 (F, VL) with FMA when the
 * CPU has them and they were built, else the baseline build. LM_KERNELS=portable forces the baseline.
 */
#include <stdlib.h>
#include <string.h>

#include "lm_kernels.h"

extern const lm_kernels lm_kernels_portable;
#if LM_HAVE_AVX512
extern const lm_kernels lm_kernels_avx512;
#endif

const lm_kernels *lm_kernels_get(void)
{
    const char *force = getenv("LM_KERNELS");
    if (force && strcmp(force, "portable") == 0)
        return &lm_kernels_portable;
#if LM_HAVE_AVX512 && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        return &lm_kernels_avx512;
#endif
    return &lm_kernels_portable;
}
