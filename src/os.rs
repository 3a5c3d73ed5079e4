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

/// The huge-page size the arena lays blocks out for (x86-64's and aarch64's PMD size with 4 KiB
/// pages).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Ask for transparent huge pages on a range (a kernel in `madvise` mode gives them only where
/// asked; in `always` mode the advice changes nothing).
pub(crate) fn advise_huge(p: *mut u8, len: usize) {
    // SAFETY: advice on a mapped range owned by the caller; it never changes contents.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE);
    }
}

/// Keep a range off transparent huge pages, even in `always` mode (pages already huge stay so
/// until they are purged).
pub(crate) fn advise_small(p: *mut u8, len: usize) {
    // SAFETY: advice on a mapped range owned by the caller; it never changes contents.
    unsafe {
        libc::madvise(p.cast(), len, libc::MADV_NOHUGEPAGE);
    }
}

/// `MADV_COLLAPSE` (Linux 6.1+; the constant is missing from some libc targets).
const MADV_COLLAPSE: libc::c_int = 25;

/// Make the huge-page-aligned 2 MiB range at `p` huge now if it holds resident 4 KiB pages,
/// copying them (the rest of the range is filled with zeroes; a range with nothing resident is
/// left alone). One range a call: over several, Linux 6.18 answers `EINVAL` at the first with
/// nothing resident and leaves the ranges after it as they were. Best effort: an older kernel,
/// `never` mode, or no free huge page leaves the range as it was, and the contents are
/// unchanged either way. Returns whether the kernel said to try again later (`EAGAIN`: a page
/// was busy, as one written a moment before can be).
pub(crate) fn collapse_huge(p: *mut u8) -> bool {
    // SAFETY: advice on a mapped range owned by the caller; a collapse keeps every byte.
    let r = unsafe { libc::madvise(p.cast(), HUGE_PAGE, MADV_COLLAPSE) };
    // SAFETY: errno is the calling thread's.
    r != 0 && unsafe { *libc::__errno_location() } == libc::EAGAIN
}

/// The kernel's transparent-huge-page mode (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Thp {
    /// Every suitable anonymous range gets huge pages.
    Always,
    /// Only ranges advised `MADV_HUGEPAGE`.
    Madvise,
    /// None.
    Never,
    /// The file is missing or unreadable (no THP support, or no sysfs).
    Unknown,
}

/// Read the kernel's THP mode (the bracketed word of the sysfs file), into a stack buffer.
pub(crate) fn thp_mode() -> Thp {
    let mut buf = [0u8; 128];
    let Some(n) = read_file(c"/sys/kernel/mm/transparent_hugepage/enabled", &mut buf) else {
        return Thp::Unknown;
    };
    let s = &buf[..n];
    let Some(open) = s.iter().position(|&c| c == b'[') else {
        return Thp::Unknown;
    };
    let word = &s[open + 1..];
    let word = &word[..word.iter().position(|&c| c == b']').unwrap_or(word.len())];
    match word {
        b"always" => Thp::Always,
        b"madvise" => Thp::Madvise,
        b"never" => Thp::Never,
        _ => Thp::Unknown,
    }
}

/// Read the start of a (small, /proc or /sys) file into `buf`; the bytes read, or `None`.
fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: opening a NUL-terminated path; the fd is checked and closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reading into a buffer of the given length from our own fd.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    (n > 0).then_some(n as usize)
}

/// Resident bytes and bytes on huge pages (`Rss` and `AnonHugePages` of `/proc/self/smaps`) of
/// the mappings that overlap any of `ranges` (`[start, end)` pairs, sorted). Streams the file
/// through a stack buffer: nothing allocates. `None` if it cannot be read. For reports only:
/// the kernel walks every page table to write the file (milliseconds for a large process).
pub(crate) fn smaps_huge(ranges: &[(usize, usize)]) -> Option<(u64, u64)> {
    // SAFETY: opening a NUL-terminated path; the fd is checked and closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/smaps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 8192];
    let (mut have, mut inside, mut rss, mut huge) = (0usize, false, 0u64, 0u64);
    loop {
        // SAFETY: reading into the free tail of a stack buffer from our own fd.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut start = 0;
        while let Some(nl) = buf[start..have].iter().position(|&c| c == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if let Some((lo, hi)) = smaps_header(line) {
                inside = ranges.iter().any(|&(a, b)| lo < b && a < hi);
            } else if inside {
                if let Some(v) = line.strip_prefix(b"Rss:") {
                    rss += kib_field(v) << 10;
                } else if let Some(v) = line.strip_prefix(b"AnonHugePages:") {
                    huge += kib_field(v) << 10;
                }
            }
        }
        // A line longer than the buffer (a path of 8 KiB) is dropped whole.
        let keep = if start == 0 && have == buf.len() {
            0
        } else {
            have - start
        };
        buf.copy_within(start..have, 0);
        have = keep;
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    Some((rss, huge))
}

/// The address range of an smaps mapping header (`lo-hi perms offset dev inode path`).
fn smaps_header(line: &[u8]) -> Option<(usize, usize)> {
    let first = line.split(|&c| c == b' ').next()?;
    let dash = first.iter().position(|&c| c == b'-')?;
    Some((hex(&first[..dash])?, hex(&first[dash + 1..])?))
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0usize, |v, &c| {
        let d = (c as char).to_digit(16)? as usize;
        v.checked_mul(16)?.checked_add(d)
    })
}

/// The number of a `   1234 kB` field.
fn kib_field(v: &[u8]) -> u64 {
    v.iter()
        .skip_while(|c| c.is_ascii_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .fold(0, |n, &c| n * 10 + u64::from(c - b'0'))
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
        register_atfork(Some(prepare), Some(parent), Some(child));
    }
}

/// glibc's `pthread_atfork` is a static stub (libc_nonshared.a) that calls `__register_atfork`
/// with the object's `__dso_handle` (so that `dlclose` drops the handlers) through the PLT; in
/// the preload library both sat at the end of its code, and every process ran them at its
/// first allocation, which made the kernel map that end too (64 KiB around each page run, see
/// `src/lib.rs`, "Code layout"). The same call, made directly.
///
/// # Safety
/// The handlers stay valid for the whole program.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn register_atfork(
    prepare: Option<unsafe extern "C" fn()>,
    parent: Option<unsafe extern "C" fn()>,
    child: Option<unsafe extern "C" fn()>,
) {
    unsafe extern "C" {
        fn __register_atfork(
            prepare: Option<unsafe extern "C" fn()>,
            parent: Option<unsafe extern "C" fn()>,
            child: Option<unsafe extern "C" fn()>,
            dso_handle: *mut libc::c_void,
        ) -> libc::c_int;
        /// The C runtime's handle of this object (crtbegin), which `__cxa_finalize` and
        /// `dlclose` name it by.
        static __dso_handle: u8;
    }
    // SAFETY: glibc's own definition of `pthread_atfork` (GLIBC_2.3.2 exports the function);
    // `__dso_handle` is defined by the C runtime in every object the C compiler links.
    unsafe {
        __register_atfork(
            prepare,
            parent,
            child,
            ptr::addr_of!(__dso_handle) as *mut _,
        );
    }
}

/// Elsewhere, `pthread_atfork` itself.
///
/// # Safety
/// As for the glibc version.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
unsafe fn register_atfork(
    prepare: Option<unsafe extern "C" fn()>,
    parent: Option<unsafe extern "C" fn()>,
    child: Option<unsafe extern "C" fn()>,
) {
    // SAFETY: the caller's handlers live for the whole program.
    unsafe {
        libc::pthread_atfork(prepare, parent, child);
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm), for tests and reports.
/// Reads into a stack buffer; `None` if the file cannot be read.
pub fn resident_bytes() -> Option<usize> {
    let mut buf = [0u8; 128];
    let n = read_file(c"/proc/self/statm", &mut buf)?;
    // statm: size resident shared text lib data dt (in pages)
    let mut fields = buf[..n].split(|&c| c == b' ');
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

/// The prefix of every option's name: a process that sets no option reads only this of the
/// option names, which otherwise lie scattered over the library's strings, each read costing a
/// window of file pages (64 KiB) resident in every process the library is preloaded into.
const OUR_PREFIX: &[u8] = b"TENSORPOOL_";

/// Whether some environment entry's name starts with `prefix` (read now, as `getenv` does).
#[link_section = ".text.hot.tensorpool"]
fn environ_has_prefix(prefix: &[u8]) -> bool {
    // SAFETY: `environ` is the process's environment block: null, or an array of pointers to
    // NUL-terminated strings ending with a null pointer. Each entry is read up to its NUL or
    // the prefix's length, whichever comes first.
    unsafe {
        let mut e = *core::ptr::addr_of!(libc::environ);
        if e.is_null() {
            return false;
        }
        while !(*e).is_null() {
            let s = (*e).cast::<u8>();
            let mut i = 0;
            while i < prefix.len() && *s.add(i) == prefix[i] {
                i += 1;
            }
            if i == prefix.len() {
                return true;
            }
            e = e.add(1);
        }
        false
    }
}

/// The value of option `name` (a NUL-terminated `TENSORPOOL_*` name), read without allocating:
/// a borrow of the process's environment block, which the allocator reads once at start-up,
/// before any thread could change it. Where no variable's name starts with `TENSORPOOL_`, the
/// name itself is not read (`OUR_PREFIX`).
#[link_section = ".text.hot.tensorpool"]
pub(crate) fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    debug_assert!(name.to_bytes().starts_with(OUR_PREFIX));
    if !environ_has_prefix(OUR_PREFIX) {
        return None;
    }
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

/// How many of the 4 KiB pages of `[addr, addr + len)` are resident (`mincore`; `addr`
/// page-aligned); None if the kernel refuses. For tests.
#[cfg(test)]
pub(crate) fn resident_pages(addr: *const u8, len: usize) -> Option<usize> {
    let pages = len.div_ceil(PAGE);
    let mut vec = [0u8; 64];
    if pages > vec.len() {
        return None;
    }
    // SAFETY: `vec` holds one byte for each page asked about.
    let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec[..pages].iter().filter(|&&b| b & 1 != 0).count())
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

/// The address of the symbol `name` in the process's global scope (the program and every
/// library loaded with it), or null: how the Python shadow stack finds the interpreter's C API
/// without linking against it (the library is preloaded into programs that have none).
pub(crate) fn symbol(name: &core::ffi::CStr) -> *mut core::ffi::c_void {
    // SAFETY: `name` is a NUL-terminated string; RTLD_DEFAULT searches the global scope.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
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

/// Give the rest of the time slice away (`sched_yield`, which allocates nothing). Called
/// directly rather than through `std::thread::yield_now`, which lies in std's code far from
/// the library's hot code: the first contended lock of a process cost it a 64 KiB window of
/// code (mimalloc-bench's glibc-thread).
#[cfg(not(loom))]
#[inline]
pub(crate) fn yield_now() {
    // SAFETY: `sched_yield` takes no arguments and touches no memory of ours.
    unsafe { libc::sched_yield() };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_lines_parse() {
        let h = b"7f00a0000000-7f00a4000000 rw-p 00000000 00:00 0 ";
        assert_eq!(smaps_header(h), Some((0x7f00a0000000, 0x7f00a4000000)));
        assert_eq!(smaps_header(b"Rss:                4 kB"), None);
        assert_eq!(smaps_header(b"VmFlags: rd wr mr mw me ac"), None);
        assert_eq!(kib_field(b"         2048 kB"), 2048);
    }

    #[test]
    fn smaps_sees_a_mapping_of_ours() {
        let len = 4 * HUGE_PAGE;
        let p = map_aligned(len, HUGE_PAGE);
        assert!(!p.is_null());
        // SAFETY: `p` is a fresh mapping of `len` bytes.
        unsafe { p.write_bytes(1, len) };
        let (rss, huge) = smaps_huge(&[(p as usize, p as usize + len)]).expect("smaps");
        assert!(rss >= len as u64, "rss {rss}");
        assert!(huge <= rss);
        assert_eq!(smaps_huge(&[]), Some((0, 0)));
        unmap(p, len);
    }
}
