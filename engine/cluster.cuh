/* Thread-block-cluster pieces shared by the CUDA kernels (sm_90): transaction barriers (mbarrier), stores
 * into a neighbour CTA's shared memory that complete on its barrier, and the cluster-wide barrier.
 * Shared addresses are 32-bit (cvta to shared); a neighbour's copy of address a is a + mapa(0)'s offset,
 * its shared window being laid out like this CTA's. */
#ifndef HAE_CLUSTER_CUH
#define HAE_CLUSTER_CUH

#include <stdint.h>

/* An mbarrier (8 bytes of shared memory) completes a phase once `count` arrivals are in and every byte
 * they announced has landed. Initialise in one thread, then mbar_init_fence and a cluster barrier
 * before any CTA of the cluster uses it. */
static __device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
/* Arrives, announcing `bytes` that stores of other CTAs will complete on bar (they may land first). */
static __device__ __forceinline__ void mbar_arrive_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
/* Arrives (release: this thread's earlier accesses happen before the phase completes). */
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
/* Arrives once every cp.async this thread issued so far has landed (the count set at init includes it). */
static __device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
/* Waits for the phase with this parity (0 for the first) to complete; parity 1 on a fresh barrier returns at
 * once (the phase before the first counts as complete). */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred p;\nWAIT_%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra WAIT_%=;\n}" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

/* The address of shared address a in the shared memory of CTA `rank` of this cluster. */
static __device__ __forceinline__ uint32_t cluster_map(uint32_t a, int rank) {
    uint32_t d;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(rank));
    return d;
}
/* 16 bytes into another CTA's shared memory at dst (from cluster_map), completing on its barrier bar. */
static __device__ __forceinline__ void st_async16(uint32_t dst, uint4 v, uint32_t bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(dst),
                 "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(bar)
                 : "memory");
}

/* The cluster barrier, split: every thread of the cluster arrives, then waits for all the others' arrivals.
 * Arrive and wait alternate in each thread. The arrival is relaxed: it orders none of the thread's memory
 * accesses (a release arrival waits for all of them, stores into other CTAs included: a third of a kernel's
 * time when measured), so it signals only what is finished by then, such as wgmma reads after their wait;
 * data moves through mbarriers. */
static __device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
static __device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

#endif
