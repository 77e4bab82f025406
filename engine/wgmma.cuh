/* Warpgroup-level tensor-core pieces shared by the CUDA kernels (wgmma, sm_90a only).
 * A warpgroup is 4 consecutive warps; wgmma D (+)= A B runs asynchronously: issue, commit a group,
 * wait for it. Its accumulator fragment for M = 64: warp i of the warpgroup holds rows 16 i + g and
 * 16 i + g + 8 (g = lane / 4), register 4 c + e holding column 8 c + 2 (lane % 4) + (e & 1) of row
 * 16 i + g + 8 (e >> 1). A taken from registers uses the same layout per 16 columns as mma.sync's
 * m16n8k16 a fragment (engine/mma.cuh). Operands in shared memory are 128-byte-swizzled blocks of 64
 * bf16 (or 128 fp8) columns: element (r, c) of a block with R rows sits at byte r 128 + ((c / 8 % 8) ^
 * (r % 8)) 16 + (c % 8) 2, the block 1024-byte aligned. */
#ifndef HAE_WGMMA_CUH
#define HAE_WGMMA_CUH

#include <stdint.h>

/* Low word of the descriptor of a 128-byte-swizzled operand at addr (lbo is only read for transposed
 * operands: the distance between 64-column blocks); shared addresses stay below 2^18, so the
 * descriptor of addr + x is this word + x / 16. The high word is the same for every operand here:
 * 8-row groups 1024 bytes apart, 128-byte swizzle. */
static __device__ __forceinline__ uint32_t wg_desc_lo(uint32_t addr, uint32_t lbo) {
    return ((addr & 0x3FFFF) >> 4) | ((lbo & 0x3FFFF) >> 4) << 16;
}
constexpr uint32_t kWgDescHi = (1024 >> 4) | 1u << 30;

/* Orders this warpgroup's register writes before the wgmma that reads them. */
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
/* Waits until at most N committed groups are pending (the N most recent). */
template <int N> static __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
/* Makes this thread's generic-proxy shared-memory writes (stores, cp.async) visible to wgmma. */
static __device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
/* Keeps the compiler from touching registers an asynchronous wgmma reads or writes until its wait:
 * place after the wait. */
template <int N> static __device__ __forceinline__ void wg_hold(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> static __device__ __forceinline__ void wg_hold(uint32_t (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(d[i])::"memory");
}

/* The accumulator list of an inline wgmma whose first 32, 64 or 128 operands are d (the HAE_WG_F8 groups). */
#define HAE_WG_D32                                                                                      \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
    "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define HAE_WG_D64                                                                                      \
    HAE_WG_D32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, "   \
               "%49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define HAE_WG_D128                                                                                     \
    HAE_WG_D64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, " \
               "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, "     \
               "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, "   \
               "%115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

/* Eight accumulator operands of an inline wgmma, d[i] .. d[i + 7]. */
#define HAE_WG_F8(d, i)                                                                                  \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),           \
        "+f"(d[i + 6]), "+f"(d[i + 7])

/* The 128 accumulator operands d[0] .. d[127]. */
#define HAE_WG_F128(d)                                                                                   \
    HAE_WG_F8(d, 0), HAE_WG_F8(d, 8), HAE_WG_F8(d, 16), HAE_WG_F8(d, 24), HAE_WG_F8(d, 32), HAE_WG_F8(d, 40),       \
        HAE_WG_F8(d, 48), HAE_WG_F8(d, 56), HAE_WG_F8(d, 64), HAE_WG_F8(d, 72), HAE_WG_F8(d, 80), HAE_WG_F8(d, 88), \
        HAE_WG_F8(d, 96), HAE_WG_F8(d, 104), HAE_WG_F8(d, 112), HAE_WG_F8(d, 120)

#endif
