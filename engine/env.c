/* env.json: what a run ran on, so numbers from different machines and builds are never confused. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                v[strcspn(v, "\n")] = '\0';
                snprintf(out, n, "%s", v);
            }
            break;
        }
    }
    fclose(f);
}

/* JSON string contents with quotes and control characters escaped. */
static void json_escape(const char *s, char *out, size_t n) {
    size_t j = 0;
    for (; *s && j + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[j++] = '\\';
            out[j++] = (char)c;
        } else if (c < 0x20) {
            j += (size_t)snprintf(out + j, n - j, "\\u%04x", c);
        } else {
            out[j++] = (char)c;
        }
    }
    out[j] = '\0';
}

char *hae_env_json(hae_backend *be) {
    char cpu[256], host[256] = "unknown", gpu[256] = "", cuda_rt[32] = "", cuda_drv[32] = "", when[64];
    char e_cpu[512], e_host[512], e_gpu[512];
    cpu_model(cpu, sizeof cpu);
    gethostname(host, sizeof host - 1);
    if (be && hae_backend_device(be) == HAE_CUDA) snprintf(gpu, sizeof gpu, "%s", hae_backend_name(be));
#ifdef HAE_HAVE_CUDA
    hae_cuda_versions(cuda_rt, cuda_drv, sizeof cuda_rt);
#endif
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_escape(cpu, e_cpu, sizeof e_cpu);
    json_escape(host, e_host, sizeof e_host);
    json_escape(gpu, e_gpu, sizeof e_gpu);
    size_t n = 4096;
    char *out = malloc(n);
    if (!out) return NULL;
    snprintf(out, n,
             "{\n  \"git_sha\": \"%s\",\n  \"build_flags\": \"%s\",\n  \"compiler\": \"%s\",\n  \"cuda_build\": %s,\n"
             "  \"cpu\": \"%s\",\n  \"cpu_cores\": %ld,\n  \"gpu\": %s%s%s,\n  \"cuda_runtime\": %s%s%s,\n"
             "  \"cuda_driver\": %s%s%s,\n  \"backend\": \"%s\",\n  \"host\": \"%s\",\n  \"time\": \"%s\"\n}\n",
             hae_build_git_sha(), hae_build_flags(), hae_build_compiler(), hae_built_with_cuda() ? "true" : "false",
             e_cpu, sysconf(_SC_NPROCESSORS_ONLN), gpu[0] ? "\"" : "", gpu[0] ? e_gpu : "null", gpu[0] ? "\"" : "",
             cuda_rt[0] ? "\"" : "", cuda_rt[0] ? cuda_rt : "null", cuda_rt[0] ? "\"" : "", cuda_drv[0] ? "\"" : "",
             cuda_drv[0] ? cuda_drv : "null", cuda_drv[0] ? "\"" : "", be ? hae_backend_name(be) : "none", e_host, when);
    return out;
}
