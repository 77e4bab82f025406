/* Dtypes, scalar conversions and tensor views. */
#include "hae.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

size_t hae_dtype_size(hae_dtype dt) {
    switch (dt) {
    case HAE_F32: return 4;
    case HAE_BF16: return 2;
    case HAE_F16: return 2;
    case HAE_FP8_E4M3: return 1;
    case HAE_I32: return 4;
    case HAE_I64: return 8;
    default: return 0;
    }
}

const char *hae_dtype_name(hae_dtype dt) {
    static const char *names[] = {"f32", "bf16", "f16", "fp8-e4m3", "i32", "i64"};
    return (unsigned)dt < HAE_DTYPE_COUNT ? names[dt] : "?";
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float hae_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t hae_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float hae_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Rounds |f| to a grid with `man_bits` mantissa bits, minimum normal exponent emin and largest finite
 * value max_finite, nearest-even; returns the magnitude as float (shared by f16 and e4m3). */
static float round_to_grid(float a, int man_bits, int emin) {
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1;
    if (exp < emin) exp = emin; /* subnormal: fixed quantum */
    float quantum = ldexpf(1.0f, exp - man_bits);
    return nearbyintf(a / quantum) * quantum; /* default rounding mode: nearest even */
}

uint16_t hae_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
    float r = round_to_grid(a, 10, -14);
    if (r >= 65520.0f || isinf(a)) return (uint16_t)(sign | 0x7c00u);
    if (r == 0.0f) return sign;
    int e;
    float m = frexpf(r, &e);
    int exp = e - 1;
    if (exp < -14) return (uint16_t)(sign | (uint16_t)(r / ldexpf(1.0f, -24)));
    uint16_t man = (uint16_t)((m * 2.0f - 1.0f) * 1024.0f);
    return (uint16_t)(sign | (uint16_t)((exp + 15) << 10) | man);
}

float hae_fp8e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, exp = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (exp == 0xf && man == 7) return NAN;
    if (exp == 0) v = ldexpf((float)man, -9);
    else v = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -v : v;
}

uint8_t hae_f32_to_fp8e4m3(float f) {
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f)) return 0x7f;
    float a = fabsf(f);
    float r = a >= 448.0f ? 448.0f : round_to_grid(a, 3, -6);
    if (r > 448.0f) r = 448.0f; /* saturate: e4m3fn has no infinity */
    if (r == 0.0f) return sign;
    int e;
    float m = frexpf(r, &e);
    int exp = e - 1;
    if (exp < -6) return (uint8_t)(sign | (uint8_t)(r / ldexpf(1.0f, -9)));
    uint8_t man = (uint8_t)((m * 2.0f - 1.0f) * 8.0f);
    return (uint8_t)(sign | (uint8_t)((exp + 7) << 3) | man);
}

hae_tensor hae_tensor_make(void *data, hae_dtype dt, hae_device dev, int ndim, const int64_t *shape) {
    hae_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.device = dev;
    t.ndim = ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t.shape[d] = shape[d];
        t.stride[d] = s;
        s *= shape[d];
    }
    return t;
}

hae_tensor hae_tensor_1d(void *data, hae_dtype dt, hae_device dev, int64_t d0) {
    const int64_t s[1] = {d0};
    return hae_tensor_make(data, dt, dev, 1, s);
}
hae_tensor hae_tensor_2d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1) {
    const int64_t s[2] = {d0, d1};
    return hae_tensor_make(data, dt, dev, 2, s);
}
hae_tensor hae_tensor_3d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1, int64_t d2) {
    const int64_t s[3] = {d0, d1, d2};
    return hae_tensor_make(data, dt, dev, 3, s);
}
hae_tensor hae_tensor_4d(void *data, hae_dtype dt, hae_device dev, int64_t d0, int64_t d1, int64_t d2,
                         int64_t d3) {
    const int64_t s[4] = {d0, d1, d2, d3};
    return hae_tensor_make(data, dt, dev, 4, s);
}

int64_t hae_tensor_numel(const hae_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

size_t hae_tensor_nbytes(const hae_tensor *t) { return (size_t)hae_tensor_numel(t) * hae_dtype_size(t->dtype); }

bool hae_tensor_is_contiguous(const hae_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

hae_tensor hae_tensor_narrow(hae_tensor t, int dim, int64_t start, int64_t len) {
    HAE_ASSERT(dim >= 0 && dim < t.ndim && start >= 0 && start + len <= t.shape[dim]);
    t.data = (char *)t.data + start * t.stride[dim] * (int64_t)hae_dtype_size(t.dtype);
    t.shape[dim] = len;
    return t;
}

const char *hae_tensor_describe(const hae_tensor *t, char *buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf + used, n - used, "[");
    for (int d = 0; d < t->ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (used < n)
        snprintf(buf + used, n - used, "] %s %s", hae_dtype_name(t->dtype), t->device == HAE_CUDA ? "cuda" : "cpu");
    return buf;
}
