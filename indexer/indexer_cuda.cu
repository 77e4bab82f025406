/* PLACEHOLDER: replaced by the real kernels. */
#include "cuda_check.cuh"
extern "C" hae_status hae_fp8_quant_cuda(hae_backend *be, const hae_fp8_quant_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_fp8_quant: no CUDA kernel yet"); }
extern "C" hae_status hae_hadamard_cuda(hae_backend *be, const hae_hadamard_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_hadamard: no CUDA kernel yet"); }
extern "C" hae_status hae_index_write_cuda(hae_backend *be, const hae_index_write_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_write: no CUDA kernel yet"); }
extern "C" hae_status hae_index_logits_cuda(hae_backend *be, const hae_index_logits_args *a) { (void)be, (void)a; return hae_error(HAE_ERR_UNSUPPORTED, "hae_index_logits: no CUDA kernel yet"); }
