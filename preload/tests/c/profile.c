/* The profile from C: leak_kv_cache() keeps 3 blocks of 8 MiB under the KV-cache kind while
 * churn() allocates and frees heavily; the profile (TENSORPOOL_PROFILE) is then written as text
 * to stdout and as folded stacks to argv[1]. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { TP_KIND_KV_CACHE = 2, TP_KIND_ACTIVATION = 5 };

static int (*tensorpool_set_kind)(int);
static int (*tensorpool_write_profile)(int, int);

__attribute__((noinline)) static void **leak_kv_cache(void) {
    void **kept = malloc(3 * sizeof(void *));
    int prev = tensorpool_set_kind(TP_KIND_KV_CACHE);
    for (int i = 0; i < 3; i++) {
        kept[i] = malloc(8 << 20);
        memset(kept[i], i, 8 << 20);
    }
    tensorpool_set_kind(prev);
    return kept;
}

__attribute__((noinline)) static long churn(void) {
    long sum = 0;
    for (int i = 0; i < 200; i++) {
        int prev = tensorpool_set_kind(TP_KIND_KV_CACHE);
        char *kv = malloc((1 << 20) + i * 4096);
        tensorpool_set_kind(TP_KIND_ACTIVATION);
        char *act = malloc(300000);
        tensorpool_set_kind(prev);
        kv[7] = 1;
        act[7] = 2;
        sum += kv[7] + act[7];
        for (int j = 0; j < 100; j++) {
            char *s = malloc(32 + j);
            s[0] = (char)j;
            sum += s[0];
            free(s);
        }
        free(kv);
        free(act);
    }
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    tensorpool_set_kind = (int (*)(int))dlsym(RTLD_DEFAULT, "tensorpool_set_kind");
    tensorpool_write_profile = (int (*)(int, int))dlsym(RTLD_DEFAULT, "tensorpool_write_profile");
    if (!tensorpool_set_kind || !tensorpool_write_profile)
        return 5;
    void **kept = leak_kv_cache();
    long sum = churn();
    fflush(stdout);
    if (tensorpool_write_profile(1, 0) != 0)
        return 6;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || tensorpool_write_profile(fd, 2) != 0)
        return 7;
    close(fd);
    printf("sum %ld bad_format=%d\n", sum, tensorpool_write_profile(1, 9));
    (void)kept;
    return 0;
}
