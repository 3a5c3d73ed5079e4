/* Under the preload library with TENSORPOOL_BACKGROUND=1: no thread of the library's exists when
 * main starts; after 320 MiB of blocks are written and freed, the process idles without a single
 * allocator call and its resident memory goes back by itself. Prints one line of figures. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int threads(void) {
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static long rss_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size, res;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res * sysconf(_SC_PAGESIZE) >> 20;
}

int main(void) {
    int at_main = threads();
    enum { N = 20, SIZE = 16 << 20 };
    char *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(SIZE);
        if (!p[i])
            return 1;
        memset(p[i], i, SIZE);
    }
    long written = rss_mib();
    for (int i = 0; i < N; i++)
        free(p[i]);
    long freed = rss_mib();
    usleep(1000 * 1000);
    printf("threads_at_main=%d written=%ld freed=%ld idle=%ld threads_after=%d\n", at_main,
           written, freed, rss_mib(), threads());
    return 0;
}
