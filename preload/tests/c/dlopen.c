/* Load the library with dlopen (not preloaded), then use its allocator and C API from several
 * threads: a library whose thread-locals needed static TLS would fail to load here. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void *(*tp_malloc)(size_t);
static void (*tp_free)(void *);
static int (*tp_set_kind)(int);

static void *worker(void *arg) {
    int kind = (int)(intptr_t)arg;
    int prev = tp_set_kind(kind);
    if (prev != 0) return (void *)1;
    for (int i = 0; i < 2000; i++) {
        size_t n = 16 + (size_t)(i * 37 % 70000);
        unsigned char *p = tp_malloc(n);
        if (!p) return (void *)1;
        memset(p, i & 0xff, n);
        for (size_t j = 0; j < n; j += 97)
            if (p[j] != (i & 0xff)) return (void *)1;
        tp_free(p);
    }
    tp_set_kind(prev);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    tp_malloc = (void *(*)(size_t))dlsym(lib, "malloc");
    tp_free = (void (*)(void *))dlsym(lib, "free");
    tp_set_kind = (int (*)(int))dlsym(lib, "tensorpool_set_kind");
    int (*stats)(int, int) = (int (*)(int, int))dlsym(lib, "tensorpool_write_stats");
    if (!tp_malloc || !tp_free || !tp_set_kind || !stats) return 1;
    pthread_t t[4];
    for (intptr_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad |= r != NULL;
    }
    fflush(stdout);
    if (stats(1, 1) != 0) return 1;
    printf("dlopen ok, failures %d\n", bad);
    return bad;
}
