/* Scopes from C: a model of two layers, each with an attention and an MLP scope; the MLP of
 * layer 1 keeps (leaks) a 4 MiB block, everything else is freed; error cases return -1 with
 * errno. Prints the checks, then the scopes as JSON on the last line. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TP_KIND_ATTENTION = 1, TP_KIND_KV_CACHE = 2, TP_KIND_ACTIVATION = 5 };

static int (*push)(const char *);
static int (*pop)(void);
static int (*depth)(void);
static int (*set_kind)(int);
static int (*write_scopes)(int, int);
static int (*enter_kind)(const char *, int);
static int (*leave_kind)(void);
static int (*get_kind)(void);

static void *layer(int i, void **kept) {
    char name[32];
    snprintf(name, sizeof name, "layers.%d", i);
    push(name);
    push("attn");
    int prev = set_kind(TP_KIND_ATTENTION);
    char *scores = malloc(3 << 20);
    memset(scores, 1, 3 << 20);
    set_kind(TP_KIND_KV_CACHE);
    void *kv = malloc(1 << 20);
    memset(kv, 2, 1 << 20);
    set_kind(prev);
    free(scores);
    pop();
    push("mlp");
    prev = set_kind(TP_KIND_ACTIVATION);
    char *h = malloc(2 << 20);
    memset(h, 3, 2 << 20);
    if (i == 1)
        *kept = h;
    else
        free(h);
    set_kind(prev);
    pop();
    pop();
    return kv;
}

int main(void) {
    push = (int (*)(const char *))dlsym(RTLD_DEFAULT, "tensorpool_scope_push");
    pop = (int (*)(void))dlsym(RTLD_DEFAULT, "tensorpool_scope_pop");
    depth = (int (*)(void))dlsym(RTLD_DEFAULT, "tensorpool_scope_depth");
    set_kind = (int (*)(int))dlsym(RTLD_DEFAULT, "tensorpool_set_kind");
    write_scopes = (int (*)(int, int))dlsym(RTLD_DEFAULT, "tensorpool_write_scopes");
    enter_kind = (int (*)(const char *, int))dlsym(RTLD_DEFAULT, "tensorpool_scope_enter_kind");
    leave_kind = (int (*)(void))dlsym(RTLD_DEFAULT, "tensorpool_scope_leave_kind");
    get_kind = (int (*)(void))dlsym(RTLD_DEFAULT, "tensorpool_get_kind");
    if (!push || !pop || !depth || !set_kind || !write_scopes || !enter_kind || !leave_kind ||
        !get_kind)
        return 5;
    void *kept = NULL, *kv[2];
    if (push("model") != 1)
        return 6;
    for (int i = 0; i < 2; i++)
        kv[i] = layer(i, &kept);
    printf("depth_in=%d\n", depth());
    pop();
    errno = 0;
    int r1 = pop();
    int e1 = errno;
    errno = 0;
    int r2 = push(NULL);
    int e2 = errno;
    int r3 = push("");
    printf("pop_outside=%d einval=%d null=%d einval=%d empty=%d depth=%d\n", r1, e1 == EINVAL,
           r2, e2 == EINVAL, r3, depth());
    printf("bad_format=%d\n", write_scopes(1, 7));
    /* The hooks' one-call pair: scope and kind in, both back out. */
    int hooks = enter_kind("kinded", TP_KIND_KV_CACHE);
    int in_depth = depth(), in_kind = get_kind();
    void *kinded = malloc(1 << 20);
    memset(kinded, 4, 1 << 20);
    int left = leave_kind();
    errno = 0;
    int bad = enter_kind("kinded", 17);
    int e3 = errno == EINVAL;
    errno = 0;
    int extra = leave_kind();
    printf("enter_kind hooks=%d depth=%d kind=%d left=%d after depth=%d kind=%d bad=%d einval=%d "
           "extra=%d einval=%d\n",
           hooks, in_depth, in_kind, left, depth(), get_kind(), bad, e3, extra, errno == EINVAL);
    /* Nested past the hooks' per-word packing: each leave brings back the kind before its
     * enter, and the scope depth follows. */
    int nested_ok = 1;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 40; i++)
            nested_ok &= enter_kind("nested", (i * 5 + 1 + round) % 6) == i + 1 && depth() == i + 1;
        for (int i = 39; i >= 0; i--) {
            nested_ok &= get_kind() == (i * 5 + 1 + round) % 6;
            nested_ok &= leave_kind() == i && depth() == i;
        }
        nested_ok &= get_kind() == 0;
    }
    printf("nested_ok=%d\n", nested_ok);
    fflush(stdout);
    if (write_scopes(1, 1) != 0)
        return 7;
    free(kv[0]);
    free(kv[1]);
    (void)kept;
    return 0;
}
