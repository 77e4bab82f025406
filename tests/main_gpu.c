/* main() of the GPU tests (tests/gpu_*.c): exits 77 (skipped) where no GPU answers. It probes in a
 * forked child, so this process (and Criterion's runner) never initialises CUDA: Criterion forks a
 * worker per test and CUDA does not survive a fork. */
#include "hae.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Whether a GPU answers, asked in a child so that this process never initialises CUDA. */
static bool gpu_present(void) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) _exit(hae_cuda_available() ? 0 : 1);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return false;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv) {
    /* Criterion re-executes this binary for each test as "boxfort-worker": no probe there. */
    bool worker = argc > 0 && argv[0] && strcmp(argv[0], "boxfort-worker") == 0;
    if (!worker) {
        if (!hae_built_with_cuda()) {
            printf("no GPU: skipped (this build has no CUDA)\n");
            return 77;
        }
        if (!gpu_present()) {
            printf("no GPU: skipped\n");
            return 77;
        }
    }
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    return result;
}
