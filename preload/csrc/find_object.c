/* The unwinder's lookup of the object holding a code address, for the static unwinder the
 * library links (libgcc_eh.a, see build.rs). A libgcc built against glibc 2.35 or later calls
 * glibc's _dl_find_object, which made the library need GLIBC_2.35 and so refuse to load where
 * glibc is older (RHEL 9 has 2.34): the Python wheel's tag went from manylinux_2_34 to 2_35.
 * This hidden definition, found by the link before glibc's, answers the same question with
 * dl_iterate_phdr, as libgcc did before 2.35. Only the library's own unwinding uses it (the
 * heap profiler's C stacks); a program's exceptions go through its own unwinder. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <string.h>

/* Where the structure carries a data base or an entry count (32-bit x86, Arm), glibc's own is used. */
#if defined(DLFO_STRUCT_HAS_EH_DBASE) && !DLFO_STRUCT_HAS_EH_DBASE && !DLFO_STRUCT_HAS_EH_COUNT

struct lookup {
    uintptr_t pc;
    struct dl_find_object *out;
    int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
    struct lookup *l = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    const ElfW(Phdr) *eh = NULL;
    int inside = 0;
    (void)size;
    for (size_t i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        if (p->p_type == PT_LOAD) {
            uintptr_t start = info->dlpi_addr + p->p_vaddr;
            uintptr_t end = start + p->p_memsz;
            if (start < lo)
                lo = start;
            if (end > hi)
                hi = end;
            if (l->pc >= start && l->pc < end)
                inside = 1;
        } else if (p->p_type == PT_GNU_EH_FRAME) {
            eh = p;
        }
    }
    if (!inside)
        return 0;
    memset(l->out, 0, sizeof *l->out);
    l->out->dlfo_map_start = (void *)lo;
    l->out->dlfo_map_end = (void *)hi;
    l->out->dlfo_eh_frame = eh ? (void *)(info->dlpi_addr + eh->p_vaddr) : NULL;
    l->found = 1;
    return 1;
}

__attribute__((visibility("hidden"))) int _dl_find_object(void *pc, struct dl_find_object *out)
{
    struct lookup l = {(uintptr_t)pc, out, 0};
    dl_iterate_phdr(visit, &l);
    return l.found ? 0 : -1;
}

#endif
