/* C++'s operator new and delete, every form, called from C through their Itanium ABI names as
 * the dynamic linker resolves them: under the preload library they must be the library's own,
 * serve blocks of the size and alignment asked (contents checked before each delete), and the
 * nothrow forms must answer null where no C++ runtime is loaded (this program has none). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void *(*new_fn)(size_t);
typedef void *(*new_al_fn)(size_t, size_t);
typedef void *(*new_nt_fn)(size_t, const void *);
typedef void *(*new_al_nt_fn)(size_t, size_t, const void *);

static int failures;
static void fail(const char *what) {
    printf("FAIL %s\n", what);
    failures++;
}

static void *sym(const char *name) {
    void *f = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    if (!f || !dladdr(f, &info) || !strstr(info.dli_fname, "tensorpool")) {
        fail(name);
        return NULL;
    }
    return f;
}

static void fill_check(unsigned char *p, size_t n, size_t align, const char *what) {
    if (!p) { fail(what); return; }
    if ((uintptr_t)p % align) fail(what);
    if (malloc_usable_size(p) < n) fail(what);
    memset(p, (int)(n & 0xff), n);
    for (size_t i = 0; i < n; i += 61)
        if (p[i] != (unsigned char)(n & 0xff)) { fail(what); return; }
}

int main(void) {
    const char *news[] = {"_Znwm", "_Znam"};
    const char *news_al[] = {"_ZnwmSt11align_val_t", "_ZnamSt11align_val_t"};
    const char *news_nt[] = {"_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t"};
    const char *news_al_nt[] = {"_ZnwmSt11align_val_tRKSt9nothrow_t",
                                "_ZnamSt11align_val_tRKSt9nothrow_t"};
    const char *dels[] = {"_ZdlPv", "_ZdaPv"};
    const char *dels_sized[] = {"_ZdlPvm", "_ZdaPvm"};
    const char *dels_al[] = {"_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t"};
    const char *dels_sized_al[] = {"_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t"};
    const char *dels_nt[] = {"_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t"};
    const char *dels_al_nt[] = {"_ZdlPvSt11align_val_tRKSt9nothrow_t",
                                "_ZdaPvSt11align_val_tRKSt9nothrow_t"};
    size_t sizes[] = {0, 1, 24, 1000, 17000, 300000, 3 << 20};
    size_t aligns[] = {32, 64, 4096, 1 << 21};
    int tag = 0; /* stands in for std::nothrow, which the forms do not read */
    for (int a = 0; a < 2; a++) {
        new_fn nw = (new_fn)sym(news[a]);
        new_al_fn nwa = (new_al_fn)sym(news_al[a]);
        new_nt_fn nwn = (new_nt_fn)sym(news_nt[a]);
        new_al_nt_fn nwan = (new_al_nt_fn)sym(news_al_nt[a]);
        void (*dl)(void *) = (void (*)(void *))sym(dels[a]);
        void (*dls)(void *, size_t) = (void (*)(void *, size_t))sym(dels_sized[a]);
        void (*dla)(void *, size_t) = (void (*)(void *, size_t))sym(dels_al[a]);
        void (*dlsa)(void *, size_t, size_t) = (void (*)(void *, size_t, size_t))sym(dels_sized_al[a]);
        void (*dln)(void *, const void *) = (void (*)(void *, const void *))sym(dels_nt[a]);
        void (*dlan)(void *, size_t, const void *) =
            (void (*)(void *, size_t, const void *))sym(dels_al_nt[a]);
        if (failures) break;
        for (int round = 0; round < 200; round++) {
            for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
                size_t n = sizes[i] + (size_t)round;
                unsigned char *p = nw(n), *q = nwn(n, &tag);
                fill_check(p, n, 16, news[a]);
                fill_check(q, n, 16, news_nt[a]);
                if (round % 2) { dl(p); dln(q, &tag); } else { dls(p, n); dl(q); }
                size_t al = aligns[(i + (size_t)round) % 4];
                p = nwa(n, al);
                q = nwan(n, al, &tag);
                fill_check(p, n, al, news_al[a]);
                fill_check(q, n, al, news_al_nt[a]);
                if (round % 2) { dla(p, al); dlan(q, al, &tag); } else { dlsa(p, n, al); dla(q, al); }
            }
        }
        if (nwn((size_t)1 << 62, &tag) != NULL) fail("nothrow new of 2^62 bytes");
        if (nwan((size_t)1 << 62, 64, &tag) != NULL) fail("aligned nothrow new of 2^62 bytes");
        dl(NULL);
        dls(NULL, 0);
    }
    printf("cxx symbols ok, failures %d\n", failures);
    return failures != 0;
}
