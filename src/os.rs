//! The only caller of `libc`: mapping, unmapping, decommitting and advising memory, plus the few
//! process facilities an allocator needs (thread-exit keys, fork handlers, environment lookup).
//!
//! Contract: inputs are page-aligned where the call needs it (callers round), failures come back
//! as a null pointer or `false`, never a panic, and nothing here allocates or holds a policy.

#[cfg(not(target_os = "linux"))]
compile_error!("tensorpool supports Linux only (it relies on mmap, mremap and madvise semantics)");

use core::ptr;

/// The page size the rest of the crate assumes. Checked against `sysconf` in debug builds.
pub(crate) const PAGE: usize = 4096;

/// Map `len` bytes (a multiple of `PAGE`) of fresh, zeroed, read-write memory, or null.
pub(crate) fn map(len: usize) -> *mut u8 {
    debug_assert!(len % PAGE == 0 && len > 0);
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Map `len` bytes whose start is aligned to `align` (a power of two, at least `PAGE`), or null.
/// Over-maps by `align` and trims both ends, so only `len` bytes stay mapped.
pub(crate) fn map_aligned(len: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align >= PAGE && len % PAGE == 0);
    let Some(total) = len.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = map(total);
    if raw.is_null() {
        return raw;
    }
    let addr = raw as usize;
    let aligned = (addr + align - 1) & !(align - 1);
    let head = aligned - addr;
    let tail = total - head - len;
    if head > 0 {
        unmap(raw, head);
    }
    if tail > 0 {
        unmap((aligned + len) as *mut u8, tail);
    }
    aligned as *mut u8
}

/// Return a mapping (or a page-aligned part of one) to the OS.
pub(crate) fn unmap(p: *mut u8, len: usize) {
    debug_assert!(p as usize % PAGE == 0 && len % PAGE == 0);
    // SAFETY: callers pass a range they mapped and no longer use; munmap of such a range cannot
    // affect other live data. A failure leaves the memory mapped, which only leaks it.
    unsafe {
        libc::munmap(p.cast(), len);
    }
}

/// Give the physical pages of a range back while keeping the range mapped; the next touch reads
/// zeros (MADV_DONTNEED, so resident memory drops at once, unlike MADV_FREE).
pub(crate) fn decommit(p: *mut u8, len: usize) {
    debug_assert!(p as usize % PAGE == 0 && len % PAGE == 0);
    // SAFETY: the range is mapped, owned by the caller, and holds no live data.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_DONTNEED);
    }
}

/// Ask for transparent huge pages on a range (the kernel here runs THP in `madvise` mode).
pub(crate) fn advise_huge(p: *mut u8, len: usize) {
    // SAFETY: advice on a mapped range owned by the caller; it never changes contents.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE);
    }
}

/// Grow the mapping at `p` from `old` to `new` bytes without moving it. `false` if the virtual
/// range after it is taken.
pub(crate) fn grow_in_place(p: *mut u8, old: usize, new: usize) -> bool {
    // SAFETY: `p..p+old` is a mapping the caller owns; without MREMAP_MAYMOVE the kernel either
    // extends it in place or fails and leaves it untouched.
    let r = unsafe { libc::mremap(p.cast(), old, new, 0) };
    r != libc::MAP_FAILED
}

/// Move the pages of the mapping `p..p+old` to `dst`, growing it to `new` bytes, without copying
/// data (the kernel moves page-table entries). `dst..dst+new` must be a range the caller reserved;
/// it is replaced. `false` leaves both ranges as they were.
pub(crate) fn move_to(p: *mut u8, old: usize, new: usize, dst: *mut u8) -> bool {
    // SAFETY: the source is the caller's mapping, the destination a reservation of the caller's
    // that MREMAP_FIXED replaces atomically; on failure nothing changes.
    let r = unsafe {
        libc::mremap(
            p.cast(),
            old,
            new,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst,
        )
    };
    r != libc::MAP_FAILED
}

/// The size of a page as the OS reports it.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r <= 0 {
        PAGE
    } else {
        r as usize
    }
}

/// A thread-specific key whose destructor runs at thread exit (after Rust's own thread-local
/// destructors), used to detect thread exit without registering a TLS destructor on an
/// allocation path. Returns `None` if the process is out of keys.
pub(crate) fn thread_key_create(dtor: unsafe extern "C" fn(*mut libc::c_void)) -> Option<u32> {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out pointer and `dtor` a function with the required signature.
    let r = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
    (r == 0).then_some(key)
}

/// Attach `value` to the calling thread under `key` (non-null values get the destructor).
pub(crate) fn thread_key_set(key: u32, value: *mut u8) {
    // SAFETY: `key` came from `thread_key_create`; setspecific stores a pointer and does not
    // dereference it.
    unsafe {
        libc::pthread_setspecific(key, value.cast());
    }
}

/// Register fork handlers (prepare in the parent before fork, parent and child after it).
pub(crate) fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    // SAFETY: the handlers are plain functions that live for the whole program.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm), for tests and reports.
/// Reads into a stack buffer; `None` if the file cannot be read.
pub fn resident_bytes() -> Option<usize> {
    // SAFETY: opening a path from a NUL-terminated literal; the fd is checked and closed.
    let fd = unsafe { libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 128];
    // SAFETY: reading into a stack buffer of the given length from our own fd.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    // statm: size resident shared text lib data dt (in pages)
    let mut fields = buf[..n as usize].split(|&c| c == b' ');
    fields.next()?;
    let rss = fields.next()?;
    let mut pages = 0usize;
    for &c in rss {
        if !c.is_ascii_digit() {
            return None;
        }
        pages = pages * 10 + (c - b'0') as usize;
    }
    Some(pages * page_size())
}

/// Physical memory in bytes.
pub(crate) fn physical_memory() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    (pages > 0).then(|| pages as usize * page_size())
}

/// The value of environment variable `name` (a NUL-terminated name), read without allocating:
/// a borrow of the process's environment block, which the allocator reads once at start-up,
/// before any thread could change it.
pub(crate) fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string that lives
    // as long as the environment entry (the process's lifetime unless someone calls setenv on
    // this name, which the allocator's start-up read does not race with).
    unsafe {
        let p = libc::getenv(name.as_ptr());
        if p.is_null() {
            None
        } else {
            Some(core::ffi::CStr::from_ptr(p).to_bytes())
        }
    }
}

/// Write all of `bytes` to stderr (no buffering, no allocation); errors are ignored.
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice of the given length to fd 2.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Run `f` at normal process exit (`atexit`). Returns false if it could not be registered.
pub(crate) fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: `f` is a plain function that lives for the whole program.
    unsafe { libc::atexit(f) == 0 }
}

/// Monotonic time in nanoseconds (vDSO: no system call on Linux).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writing into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Read the file at `dir` + "/" + `name` into `buf` (no allocation: the path is built on the
/// stack); the bytes read, or `None` if the path is too long or the file cannot be read.
pub(crate) fn read_small_file<'a>(dir: &[u8], name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut path = [0u8; 512];
    let len = dir.len() + 1 + name.len();
    if len >= path.len() {
        return None;
    }
    path[..dir.len()].copy_from_slice(dir);
    path[dir.len()] = b'/';
    path[dir.len() + 1..len].copy_from_slice(name);
    // SAFETY: `path` is NUL-terminated (zeroed beyond `len`); the fd is checked and closed.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reading into a live buffer of the given length from our own fd.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if n < 0 {
        return None;
    }
    Some(&buf[..n as usize])
}
