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
    map_near(ptr::null_mut(), len)
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

/// Ask for transparent huge pages on a range (the kernel here runs THP in `madvise` mode).
pub(crate) fn advise_huge(p: *mut u8, len: usize) {
    // SAFETY: advice on a mapped range owned by the caller; it never changes contents.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE);
    }
}

/// Map `len` bytes (a multiple of `PAGE`) of fresh, zeroed, read-write memory at `hint` if that
/// range is free (a null hint: none), else wherever the kernel chooses; null on failure. The hint is only a
/// preference (no `MAP_FIXED`): nothing already mapped is ever replaced.
pub(crate) fn map_near(hint: *mut u8, len: usize) -> *mut u8 {
    debug_assert!(len % PAGE == 0 && len > 0);
    #[cfg(debug_assertions)]
    {
        // SAFETY: `sysconf` reads a constant of the running system; it touches no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        debug_assert_eq!(page, PAGE as libc::c_long, "the crate assumes 4 KiB pages");
    }
    // SAFETY: an anonymous private mapping without MAP_FIXED never replaces an existing one; the
    // result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            hint.cast(),
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

/// Give the physical pages of a range back to the OS while keeping the range mapped (which
/// splits no mapping). With `lazy` the kernel takes them only under memory pressure
/// (`MADV_FREE`: the pages stay in the resident count until then, and their contents are
/// undefined); otherwise at once (`MADV_DONTNEED`: the next touch reads zeros). Returns whether
/// the kernel accepted the advice.
pub(crate) fn purge(p: *mut u8, len: usize, lazy: bool) -> bool {
    debug_assert!(p as usize % PAGE == 0 && len % PAGE == 0);
    let advice = if lazy {
        libc::MADV_FREE
    } else {
        libc::MADV_DONTNEED
    };
    // SAFETY: the range is mapped, owned by the caller and holds no live data.
    unsafe { libc::madvise(p.cast(), len, advice) == 0 }
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
pub(crate) fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes);
}

/// Write all of `bytes` to `fd` (no buffering, no allocation); errors are ignored.
pub(crate) fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice of the given length to a descriptor (a bad one
        // only makes `write` fail).
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Create (or truncate) the file at `path` (NUL-terminated) for writing; its descriptor, or
/// `None`.
pub(crate) fn create_file(path: &core::ffi::CStr) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    (fd >= 0).then_some(fd)
}

/// Close a descriptor `create_file` returned.
pub(crate) fn close(fd: i32) {
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
}

/// The calling process's id.
pub(crate) fn pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Stop the process: one line on stderr, `tensorpool: {args}; aborting`, then SIGABRT. The line
/// is formatted on the stack: nothing is allocated (the heap may be what is broken).
#[cold]
pub(crate) fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    use core::fmt::Write;
    let mut line = crate::text::StackStr::<320>::new();
    let _ = writeln!(line, "tensorpool: {args}; aborting");
    write_stderr(line.as_bytes());
    abort()
}

/// Stop the process with SIGABRT (after `fatal`'s message).
fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// Run `f` at normal process exit (`atexit`). Returns false if it could not be registered.
pub(crate) fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: `f` is a plain function that lives for the whole program.
    unsafe { libc::atexit(f) == 0 }
}

#[cfg_attr(loom, allow(dead_code))] // models drive decay with explicit times
/// Monotonic time in nanoseconds at the kernel tick's resolution (a few milliseconds; vDSO, a
/// few nanoseconds a call): the clock of decay, where milliseconds are the unit.
pub(crate) fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writing into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleep for `ns` nanoseconds (interrupted sleeps end early; callers loop anyway).
pub(crate) fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

/// Start a detached thread running `f(null)` with a small stack. Returns whether it started.
/// `pthread_create` may call `malloc` (for its thread-local storage), so callers must hold no
/// allocator lock.
pub(crate) fn spawn_detached(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    // SAFETY: the attribute object is initialised before use and destroyed after; the thread
    // function is a plain function that lives for the whole program.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 << 10);
        let mut tid: libc::pthread_t = 0;
        let r = libc::pthread_create(&mut tid, &attr, f, ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        r == 0
    }
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
