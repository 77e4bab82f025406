/* PLACEHOLDER: replaced by the real kernels. */
#include "cuda_check.cuh"
extern "C" hae_status hae_sparse_attention_cuda(hae_backend *be, const hae_sparse_attention_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_sparse_attention: no CUDA kernel yet"); }
