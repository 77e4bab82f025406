/* Warp-level tensor-core pieces shared by the CUDA kernels (sm_80+ instructions, run on sm_90a):
 * cp.async copies into shared memory, ldmatrix fragment loads from it and the m16n8k16 bf16 MMA.
 * Fragments of mma m16n8k16 (g = lane / 4, t = lane % 4):
 *   a: {row g, cols 2t..2t+1}, {row g+8, 2t..}, {row g, 2t+8..}, {row g+8, 2t+8..};
 *   b: {k 2t..2t+1, col g}, {k 2t+8.., col g};  c: {row g, cols 2t, 2t+1}, {row g+8, cols 2t, 2t+1}.
 * ldmatrix x4: lanes 8i..8i+7 give the row addresses of matrix i, which lands in r[i]; .trans gives
 * each thread the transposed elements (a [k][n] tile read as b fragments). */
#ifndef HAE_MMA_CUH
#define HAE_MMA_CUH

#include <stdint.h>

static __device__ __forceinline__ uint32_t hae_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16 bytes global -> shared, or 16 zero bytes when !valid (nothing is read then). */
static __device__ __forceinline__ void cp_async16z(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* Waits until at most N of this thread's groups are in flight. */
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
static __device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
/* Named barrier id (1..15; 0 is __syncthreads) over n threads (a multiple of 32): bar_sync waits for all n,
 * bar_arrive counts towards n without waiting (a producer signalling consumers that bar_sync). */
static __device__ __forceinline__ void bar_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}
static __device__ __forceinline__ void bar_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}
/* Max and sum over the 4 lanes of a quad (lanes 4 g .. 4 g + 3: the threads holding one row of an MMA fragment). */
static __device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
static __device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
static __device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
static __device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
/* c += a b, bf16 in, fp32 accumulate */
static __device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif
