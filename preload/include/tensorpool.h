/* tensorpool: a memory allocator for ML inference processes, as a C shared library.
 *
 * Preload it to replace malloc and friends in any program:
 *
 *     LD_PRELOAD=/path/to/libtensorpool_preload.so python3 infer.py
 *
 * The library exports malloc, free, calloc, realloc, reallocarray, posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc and malloc_usable_size with glibc's semantics and errno values, and
 * the functions below. TENSORPOOL_* environment variables configure it (see README.md), e.g.
 * TENSORPOOL_STATS=1 prints the per-kind statistics at exit.
 */
#ifndef TENSORPOOL_H
#define TENSORPOOL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tensor kinds: the pools allocations are routed to. */
enum {
    TP_KIND_GENERAL = 0,
    TP_KIND_ATTENTION = 1,
    TP_KIND_KV_CACHE = 2,
    TP_KIND_IMAGE_EMBEDDING = 3,
    TP_KIND_TEXT_EMBEDDING = 4,
    TP_KIND_ACTIVATION = 5
};

/* Set the calling thread's kind: its allocations from now on go to that kind's pools. Returns
 * the previous kind (restore it by setting it again), or -1 for an unknown kind (nothing
 * changes). */
int tensorpool_set_kind(int kind);

/* The calling thread's kind. */
int tensorpool_get_kind(void);

/* The kind a name denotes ("kv_cache", "attention_weights", "image_features", ...), or -1. */
int tensorpool_kind_from_name(const char *name);

/* Release every cached block to the OS (every thread's cache of large blocks that its owner is
 * not using at that moment included). Returns the bytes released. */
size_t tensorpool_trim(void);

/* Write the statistics to a file descriptor: a table, or one JSON line if json is non-zero.
 * Returns 0, or -1 with errno set. */
int tensorpool_write_stats(int fd, int json);

/* Write the memory timeline (recorded with TENSORPOOL_TIMELINE=1) to a file descriptor: CSV if
 * format is 0, an SVG chart if it is 1. Returns 0, or -1 with errno set (EINVAL: another
 * format). */
int tensorpool_write_timeline(int fd, int format);

/* Write the profile of live memory by call site (sampled with TENSORPOOL_PROFILE=512K) to a file
 * descriptor: the report's text if format is 0, JSON if 1, folded stacks (flamegraph tools) if
 * 2. Returns 0, or -1 with errno set (EINVAL: another format). */
int tensorpool_write_profile(int fd, int format);

/* Write the memory report, one self-contained HTML page (timeline, per-kind table, live call
 * sites), to a file descriptor. TENSORPOOL_REPORT=path.html writes it at exit. Returns 0, or -1
 * with errno set. */
int tensorpool_write_report(int fd);

/* Put a named marker ("request 2") on the timeline, if it is recording: the SVG chart draws it
 * as a labelled line. The first 32 bytes of the name are kept. */
void tensorpool_mark(const char *name);

/* Scopes: named, nested stretches of a thread's work ("layers.3.self_attn", "request 2").
 * Large blocks (tensors) allocated while a scope is the thread's innermost are attributed to
 * it (own bytes) and to every scope around it (inclusive bytes), live and at peak, per kind,
 * until they are freed by whatever thread. A scope is named by its path: entering "mlp" inside
 * "layers.3" twice reaches the same scope. */

/* Enter the scope name (the first 104 bytes are kept) inside the calling thread's current one.
 * Returns the new depth (1 at the top), or -1 with errno set, changing nothing: EINVAL for a
 * null or empty name, ENOSPC when 4096 scopes exist, E2BIG when scopes nest 255 deep. */
int tensorpool_scope_push(const char *name);

/* Enter the scope name and set the calling thread's kind in one call (hooks that run on every
 * module call); tensorpool_scope_leave_kind undoes the innermost. The thread's outermost entry
 * also shares its scopes with threads outside all scopes (see tensorpool_scope_share). Returns
 * the new hook depth, or -1 with errno EINVAL (nothing changes) for a null name or an unknown
 * kind. A scope that cannot be entered (a full table, too deep) is counted as refused and only
 * the kind changes. */
int tensorpool_scope_enter_kind(const char *name, int kind);

/* Undo the thread's innermost tensorpool_scope_enter_kind: its kind comes back and its scope, if
 * entered, is left. Returns the hook depth left, or -1 with errno EINVAL if there was none. */
int tensorpool_scope_leave_kind(void);

/* Leave the calling thread's innermost scope. Returns the depth left (0: outside every scope),
 * or -1 with errno EINVAL if no scope was entered. */
int tensorpool_scope_pop(void);

/* The calling thread's scope depth (0: outside every scope). */
int tensorpool_scope_depth(void);

/* Share the calling thread's scopes (on non-zero) or stop: threads outside every scope (an
 * operator's worker threads) then allocate into the calling thread's current scope. One thread
 * shares at a time; the last to call wins. */
void tensorpool_scope_share(int on);

/* Lower every scope's peaks to its live bytes now: peaks from here on are of what runs next. */
void tensorpool_scope_reset_peaks(void);

/* Write every scope with its bytes to a file descriptor: a table if format is 0, one JSON line
 * if 1 ({"large_live", "outside_live", "refused", "scopes": [{"id", "parent", "name", "path",
 * "depth", "own", "inclusive"}]}). Returns 0, or -1 with errno set (EINVAL: another format). */
int tensorpool_write_scopes(int fd, int format);

/* Keep (on non-zero) or stop keeping the Python stacks of sampled allocations (profiling on):
 * a profile function the interpreter calls at every Python call and return keeps a shadow
 * stack the sampler reads without calling into the interpreter. Call it from Python (ctypes:
 * the interpreter's lock held). Returns 1 when every thread is covered (Python 3.12+), 0 when
 * the calling thread is, -1 with errno ENOSYS without a Python interpreter. */
int tensorpool_python_stacks(int on);

/* glibc's malloc_trim, malloc_stats, mallinfo, mallinfo2 and malloc_info are exported too, with
 * glibc's signatures (<malloc.h>): malloc_trim releases every cached page and returns 1 if it
 * released any; mallinfo2's uordblks are live bytes, fordblks free bytes kept resident, hblks and
 * hblkhd the arena's mappings and mapped bytes; malloc_info writes the statistics as XML. */

#ifdef __cplusplus
}
#endif

#endif /* TENSORPOOL_H */
