/* The memory timeline from C: large blocks of two kinds come and go (TENSORPOOL_TIMELINE=1
 * records every large-block event), then the timeline is written as CSV to argv[1] and as SVG
 * to argv[2]; a bad format must fail with EINVAL. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The kinds of include/tensorpool.h. */
enum { TP_KIND_KV_CACHE = 2, TP_KIND_ACTIVATION = 5 };

/* Found at run time, so the program also links (and runs) without the library. */
static int (*tensorpool_set_kind)(int);
static int (*tensorpool_write_timeline)(int, int);
static void (*tensorpool_mark)(const char *);

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    tensorpool_set_kind = (int (*)(int))dlsym(RTLD_DEFAULT, "tensorpool_set_kind");
    tensorpool_write_timeline = (int (*)(int, int))dlsym(RTLD_DEFAULT, "tensorpool_write_timeline");
    tensorpool_mark = (void (*)(const char *))dlsym(RTLD_DEFAULT, "tensorpool_mark");
    if (!tensorpool_set_kind || !tensorpool_write_timeline || !tensorpool_mark)
        return 5;
    for (int round = 0; round < 20; round++) {
        if (round % 5 == 0) {
            char name[32];
            snprintf(name, sizeof name, "request %d", round / 5 + 1);
            tensorpool_mark(name);
        }
        int prev = tensorpool_set_kind(TP_KIND_KV_CACHE);
        char *kv = malloc((size_t)(round + 1) << 20);
        tensorpool_set_kind(TP_KIND_ACTIVATION);
        char *act = malloc(3 << 20);
        tensorpool_set_kind(prev);
        if (!kv || !act)
            return 3;
        memset(kv, round, (size_t)(round + 1) << 20);
        memset(act, round, 3 << 20);
        free(act);
        free(kv);
    }
    for (int i = 0; i < 2; i++) {
        int fd = open(argv[i + 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || tensorpool_write_timeline(fd, i) != 0)
            return 4;
        close(fd);
    }
    errno = 0;
    int bad = tensorpool_write_timeline(1, 7);
    printf("bad_format=%d errno_einval=%d\n", bad, errno == EINVAL);
    return 0;
}
