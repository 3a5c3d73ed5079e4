/* A multi-threaded C program that checks the allocation functions' contents and contracts. It
 * prints a deterministic summary, the same under any correct allocator; with tensorpool preloaded
 * it also checks the C API (set with TP_CHECK_API=1). Exit status 0 means every check passed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 4
#define SLOTS 512
#define STEPS 40000

static int failures;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__);       \
            __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);                      \
        }                                                                            \
    } while (0)

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Blocks passed between threads: each slot holds a block, its size and its fill byte. */
static struct {
    unsigned char *p;
    size_t size;
    unsigned char fill;
    int busy;
} shared_slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int filled_with(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = next(s) % 100;
    if (r < 70) return next(s) % 512 + 1;
    if (r < 95) return next(s) % 65536 + 1;
    return next(s) % (2u << 20) + 1;
}

static void *worker(void *arg) {
    uint64_t s = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    for (int step = 0; step < STEPS; step++) {
        int i = next(&s) % SLOTS;
        pthread_mutex_lock(&lock);
        if (shared_slots[i].busy) {
            pthread_mutex_unlock(&lock);
            continue;
        }
        shared_slots[i].busy = 1;
        unsigned char *p = shared_slots[i].p;
        size_t size = shared_slots[i].size;
        unsigned char fill = shared_slots[i].fill;
        pthread_mutex_unlock(&lock);

        if (p) {
            CHECK(filled_with(p, size, fill));
            CHECK(malloc_usable_size(p) >= size);
            switch (next(&s) % 3) {
            case 0:
                free(p);
                p = NULL;
                size = 0;
                break;
            case 1: { /* grow or shrink, contents kept */
                size_t n = pick_size(&s);
                unsigned char *q = realloc(p, n);
                CHECK(q != NULL);
                CHECK(filled_with(q, n < size ? n : size, fill));
                p = q;
                size = n;
                break;
            }
            default:
                free(p);
                p = NULL;
                size = 0;
            }
        }
        if (!p) {
            size = pick_size(&s);
            switch (next(&s) % 4) {
            case 0:
                p = malloc(size);
                break;
            case 1:
                p = calloc(1, size);
                CHECK(p && filled_with(p, size, 0));
                break;
            case 2: {
                void *q = NULL;
                size_t align = (size_t)1 << (3 + next(&s) % 10);
                CHECK(posix_memalign(&q, align, size) == 0);
                CHECK(((uintptr_t)q & (align - 1)) == 0);
                p = q;
                break;
            }
            default: {
                size_t align = (size_t)64 << (next(&s) % 4);
                p = aligned_alloc(align, size);
                CHECK(((uintptr_t)p & (align - 1)) == 0);
            }
            }
            CHECK(p != NULL);
        }
        fill = (unsigned char)(next(&s) | 1);
        if (p) memset(p, fill, size);
        pthread_mutex_lock(&lock);
        shared_slots[i].p = p;
        shared_slots[i].size = size;
        shared_slots[i].fill = fill;
        shared_slots[i].busy = 0;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

/* Allocation before main: a constructor's block must survive into main intact. */
static unsigned char *early;
__attribute__((constructor)) static void before_main(void) {
    early = malloc(100000);
    if (early) memset(early, 0x5a, 100000);
    free(malloc(40)); /* and a free before main */
}

/* Thread start-up and exit: a thread that allocates in its first instant and frees at exit via
 * a key destructor. */
static pthread_key_t key;
static void at_thread_exit(void *p) {
    CHECK(filled_with(p, 3000, 0x33));
    free(p);
}
static void *short_lived(void *arg) {
    (void)arg;
    unsigned char *p = malloc(3000);
    memset(p, 0x33, 3000);
    pthread_setspecific(key, p);
    return NULL;
}

static void contracts(void) {
    CHECK(early && filled_with(early, 100000, 0x5a));
    free(early);
    CHECK(pthread_key_create(&key, at_thread_exit) == 0);
    for (int i = 0; i < 32; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, short_lived, NULL) == 0);
        pthread_join(t, NULL);
    }
    /* malloc(0) and friends: unique, freeable pointers. */
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    free(a);
    free(b);
    free(NULL);
    /* Overflow: ENOMEM and null, nothing allocated. */
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(SIZE_MAX - 4096) == NULL && errno == ENOMEM);
    char *r = malloc(16);
    strcpy(r, "kept");
    errno = 0;
    CHECK(reallocarray(r, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    CHECK(strcmp(r, "kept") == 0);
    errno = 0;
    CHECK(realloc(r, SIZE_MAX - 4096) == NULL && errno == ENOMEM);
    CHECK(strcmp(r, "kept") == 0);
    r = reallocarray(r, 100, 10);
    CHECK(r && strcmp(r, "kept") == 0);
    CHECK(realloc(r, 0) == NULL); /* frees, as glibc does */
    r = realloc(NULL, 10);
    CHECK(r != NULL);
    free(r);
    /* Alignment contracts. */
    void *q = (void *)1;
    CHECK(posix_memalign(&q, 24, 8) == EINVAL && q == (void *)1);
    CHECK(posix_memalign(&q, 4, 8) == EINVAL);
    CHECK(posix_memalign(&q, (size_t)1 << 21, 100) == 0 && ((uintptr_t)q & ((1 << 21) - 1)) == 0);
    free(q);
    /* glibc before 2.38 rounds a bad alignment up; 2.38 and tensorpool refuse it. */
    errno = 0;
    void *aa = aligned_alloc(48, 96);
    CHECK((aa == NULL && errno == EINVAL) || (aa && ((uintptr_t)aa & 15) == 0));
    free(aa);
    void *m = memalign(48, 100); /* rounded up to 64 */
    CHECK(m && ((uintptr_t)m & 63) == 0);
    free(m);
    long pg = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v && ((uintptr_t)v % pg) == 0);
    free(v);
    void *pv = pvalloc(1);
    CHECK(pv && ((uintptr_t)pv % pg) == 0 && malloc_usable_size(pv) >= (size_t)pg);
    free(pv);
    pv = pvalloc(0);
    CHECK(pv && ((uintptr_t)pv % pg) == 0);
    free(pv);
    CHECK(malloc_usable_size(NULL) == 0);
}

static void api(void) {
    int (*set_kind)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "tensorpool_set_kind");
    int (*get_kind)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "tensorpool_get_kind");
    int (*from_name)(const char *) =
        (int (*)(const char *))dlsym(RTLD_DEFAULT, "tensorpool_kind_from_name");
    size_t (*trim)(void) = (size_t(*)(void))dlsym(RTLD_DEFAULT, "tensorpool_trim");
    int (*stats)(int, int) = (int (*)(int, int))dlsym(RTLD_DEFAULT, "tensorpool_write_stats");
    CHECK(set_kind && get_kind && from_name && trim && stats);
    if (!set_kind) return;
    CHECK(from_name("kv_cache") == 2 && from_name("attention_weights") == 1);
    CHECK(from_name("optimizer") == -1 && from_name(NULL) == -1);
    CHECK(set_kind(7) == -1 && get_kind() == 0);
    int prev = set_kind(2);
    CHECK(prev == 0 && get_kind() == 2);
    char *kv = malloc(3 << 20); /* a KV-cache block */
    memset(kv, 7, 3 << 20);
    set_kind(prev);
    CHECK(get_kind() == 0);
    fflush(stdout);
    CHECK(stats(1, 1) == 0); /* one JSON line on stdout, with the live KV-cache block */
    free(kv);
    CHECK(trim() >= (size_t)(3 << 20));
    CHECK(stats(-1, 0) == -1 && errno == EBADF);
}

int main(void) {
    contracts();
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < SLOTS; i++) {
        if (shared_slots[i].p) {
            CHECK(filled_with(shared_slots[i].p, shared_slots[i].size, shared_slots[i].fill));
            free(shared_slots[i].p);
        }
    }
    /* A child after fork allocates and frees, then exits. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        unsigned char *c = malloc(1 << 20);
        memset(c, 1, 1 << 20);
        int ok = filled_with(c, 1 << 20, 1);
        free(c);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (getenv("TP_CHECK_API")) api();
    printf("threads %d, steps %d each, failures %d\n", THREADS, STEPS, failures);
    return failures != 0;
}
