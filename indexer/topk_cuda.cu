/* PLACEHOLDER: replaced by the real kernels. */
#include "cuda_check.cuh"
extern "C" hae_status hae_topk_cuda(hae_backend *be, const hae_topk_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_topk: no CUDA kernel yet"); }
