/* One bad free per run (argv[1] picks it): under the preload library each must stop the
 * process with SIGABRT after a line naming tensorpool. Case 8 frees correctly and must exit 0.
 * Cases 9 and 10 (an overflow by one byte, a write after free) are caught only under
 * TENSORPOOL_CHECK=full. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char statik[4096];

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int which = atoi(argv[1]);
    char stack[64];
    char *volatile p;
    switch (which) {
    case 0: p = malloc(100); free(p + 16); break;             /* inside a small block */
    case 1: p = malloc(1 << 20); free(p + 8192); break;       /* inside a large block */
    case 2: p = malloc(64); free(p); free(p); break;          /* double free, small */
    case 3: p = malloc(8 << 20); free(p); free(p); break;     /* double free, large */
    case 4: p = stack; free(p + 16); break;                   /* a stack address */
    case 5: p = statik; free(p + 64); break;                  /* a static array */
    case 6: free((void *)0x10000000000UL); break;             /* unmapped */
    case 7: p = malloc(100); p = realloc(p + 16, 200); break; /* realloc inside a block */
    case 8: p = malloc(100); memset(p, 1, 100); free(p); break;
    case 9: p = malloc(100); memset(p, 1, 101); free(p); break;   /* one byte too many */
    case 10:                                                      /* a write after free */
        p = malloc(100);
        free(p);
        p[5] = 0x41;
        for (int i = 0; i < 3000; i++)
            free(malloc(48));
        break;
    }
    char *a = malloc(100), *b = malloc(100);
    memset(a, 2, 100);
    memset(b, 3, 100);
    printf("survived %d\n", a != b);
    free(a);
    free(b);
    return 0;
}
