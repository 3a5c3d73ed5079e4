//! tensorpool as a C shared library (`libtensorpool_preload.so`): the C allocation functions with
//! glibc's semantics and errno values and C++'s `operator new` and `delete` (`cxx`), for
//! `LD_PRELOAD` under Python, C and C++ inference stacks, glibc's introspection calls
//! (`malloc_trim`, `malloc_stats`, `mallinfo`, `mallinfo2`, `malloc_info`), and a small C API
//! (`include/tensorpool.h`) to tag the calling thread's allocations by tensor kind, trim, and
//! write the statistics and the memory timeline to a file descriptor.
//!
//! Every function here is a thin translation of C's contract onto `TensorPool`'s raw interface:
//! sizes of 0, overflowing counts, bad alignments and refusals are answered as glibc answers them
//! (a unique pointer, `ENOMEM`, `EINVAL`, null), never by aborting.
//!
//! Thread-local state is reached through the general-dynamic TLS model (Rust's default for
//! shared objects), so the library also loads with `dlopen` (no static TLS needed); when it is
//! preloaded, its TLS is part of every thread's static block, so reaching it never allocates.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod cxx;

use core::ffi::{c_char, c_int, c_void, CStr};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use tensorpool::{TensorKind, TensorPool};

/// Rust code inside the library allocates from tensorpool directly. (Read by every allocation:
/// with the hot read-only data, `layout.ld`. A `TensorPool` is plain configuration; were a cell
/// ever added to it, it would have to leave that read-only section.)
#[global_allocator]
#[link_section = ".rodata.hot.tensorpool"]
static ALLOC: TensorPool = TensorPool::new();

/// What `load` looks for, with the hot read-only data (`layout.ld`): string literals lie among
/// the library's other strings, and each read of one costs every process a window of the
/// file's pages.
#[link_section = ".rodata.hot.tensorpool"]
static LD_PRELOAD_VAR: [u8; 11] = *b"LD_PRELOAD\0";
#[link_section = ".rodata.hot.tensorpool"]
static OUR_NAME: [u8; 10] = *b"tensorpool";

/// Apply the configuration (`TENSORPOOL_*` options, the exit report) when the library is loaded,
/// not at the first large allocation: many programs (`git --version`) never make one.
///
/// A preloaded library is loaded before the program's `main`: the background decay thread (if
/// `TENSORPOOL_BACKGROUND=1`) must not start until `main` does (see `__libc_start_main` below).
/// Loaded later with `dlopen`, the program is already in `main`.
extern "C" fn load() {
    // SAFETY: the array ends with its only NUL.
    let var = unsafe { CStr::from_bytes_with_nul_unchecked(&LD_PRELOAD_VAR) };
    let preloaded = tensorpool_env_mentions(var, &OUR_NAME);
    tensorpool::defer_background_thread(preloaded);
    ALLOC.init();
}

/// Whether the environment variable `name` contains `needle` (read without allocating).
fn tensorpool_env_mentions(name: &CStr, needle: &[u8]) -> bool {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    if v.is_null() {
        return false;
    }
    // SAFETY: as above.
    let v = unsafe { CStr::from_ptr(v) }.to_bytes();
    v.windows(needle.len()).any(|w| w == needle)
}

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type StartMainFn = unsafe extern "C" fn(
    MainFn,
    c_int,
    *mut *mut c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;

/// The program's `main`, while our wrapper runs in its place.
#[link_section = ".bss.hot.tensorpool"]
static MAIN: AtomicUsize = AtomicUsize::new(0);

/// glibc's `__libc_start_main`, interposed only to learn when `main` starts: it calls the real
/// one with `main_started` in place of `main`, which lifts the hold on the background thread and
/// calls the program's `main` with the same arguments.
///
/// # Safety
/// Called once, by the program's entry code, with the arguments glibc expects.
#[no_mangle]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: c_int,
    argv: *mut *mut c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> c_int {
    // SAFETY: looking up the next definition of a symbol glibc always defines.
    let real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"__libc_start_main".as_ptr()) };
    if real.is_null() {
        // Not glibc: nothing to wrap, and no way to go on.
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() };
    }
    MAIN.store(main as usize, Ordering::Relaxed);
    // SAFETY: `real` is glibc's `__libc_start_main`, of this signature.
    unsafe {
        let real: StartMainFn = core::mem::transmute(real);
        real(main_started, argc, argv, init, fini, rtld_fini, stack_end)
    }
}

/// Runs as the program's `main`.
unsafe extern "C" fn main_started(
    argc: c_int,
    argv: *mut *mut c_char,
    envp: *mut *mut c_char,
) -> c_int {
    tensorpool::defer_background_thread(false);
    // SAFETY: `MAIN` holds the program's `main`, stored before glibc called us.
    unsafe {
        let main: MainFn = core::mem::transmute(MAIN.load(Ordering::Relaxed));
        main(argc, argv, envp)
    }
}

#[used]
#[link_section = ".init_array"]
static LOAD: extern "C" fn() = load;

/// glibc's `malloc` alignment on x86_64 and aarch64.
const MIN_ALIGN: usize = 16;

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn alloc(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let p = ALLOC.alloc_raw(size, align, zeroed);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// C `malloc`: the thread's cached block inline, anything else through `malloc_slow`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = ALLOC.alloc_cached(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size)
}

/// `malloc` past its fast path. A C-ABI function, so that the compiler knows it does not unwind:
/// `malloc` then needs no landing pad and tail-calls it (with a Rust function it kept a stack
/// frame for the abort-on-unwind guard of an `extern "C"` function: 31 instructions on the
/// fast path, then 24 counting the TLS descriptor's resolver, by callgrind; 21 since it reaches
/// its thread-local without a call, see the crate's `tls`).
#[cold]
#[inline(never)]
extern "C" fn malloc_slow(size: usize) -> *mut c_void {
    alloc(size, MIN_ALIGN, false)
}

/// C `free`.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { ALLOC.free_raw(p.cast()) }
}

/// C `calloc`: `ENOMEM` when `n * size` overflows.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => {
            // A small block from the thread's pages has held other data: cleared here, with
            // none of the general path's steps (a layout, a test for fresh pages).
            let p = ALLOC.alloc_cached(total);
            if !p.is_null() {
                // SAFETY: a block of at least `total` bytes, just handed out.
                unsafe { ptr::write_bytes(p, 0, total) };
                return p.cast();
            }
            alloc(total, MIN_ALIGN, true)
        }
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C `realloc`: null `p` allocates; size 0 frees `p` and returns null (glibc's behaviour); on
/// failure `p` is left as it was.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: the caller's contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // SAFETY: `p` is live (the caller's contract).
    let q = unsafe { ALLOC.realloc_raw(p.cast(), size, MIN_ALIGN) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// C `reallocarray`: `realloc(p, n * size)` with `ENOMEM` on overflow (leaving `p` alone).
///
/// # Safety
/// As `realloc`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C `posix_memalign`: `EINVAL` unless `align` is a power of two multiple of `sizeof(void *)`,
/// `ENOMEM` on refusal (returned, not set in errno; `*out` untouched on error).
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = ALLOC.alloc_raw(size, align.max(MIN_ALIGN), false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's contract.
    unsafe { *out = p.cast() };
    0
}

/// C11 `aligned_alloc`: `EINVAL` unless `align` is a power of two (glibc 2.38's rule).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc(size, align.max(MIN_ALIGN), false)
}

/// `memalign`: an alignment that is not a power of two is rounded up to one, as glibc does;
/// `EINVAL` if that is impossible.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.max(MIN_ALIGN).checked_next_power_of_two() {
        Some(a) if a <= isize::MAX as usize => alloc(size, a, false),
        _ => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// `valloc`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc(size, page(), false)
}

/// `pvalloc`: page-aligned, size rounded up to whole pages (one page for 0).
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let pg = page();
    match size.max(1).checked_next_multiple_of(pg) {
        Some(s) => alloc(s, pg, false),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `malloc_usable_size`: 0 for null.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        0
    } else {
        // SAFETY: the caller's contract.
        unsafe { ALLOC.usable_size(p.cast()) }
    }
}

// ---------------------------------------------------------------------------------------------
// The tensorpool C API (include/tensorpool.h)
// ---------------------------------------------------------------------------------------------

/// Set the calling thread's tensor kind (`TP_KIND_*`, 0 to 5) and return the previous one, or
/// -1 (changing nothing) for an unknown kind. Restore by setting the returned kind again.
#[no_mangle]
pub extern "C" fn tensorpool_set_kind(kind: c_int) -> c_int {
    match usize::try_from(kind).ok().and_then(TensorKind::from_index) {
        Some(k) => tensorpool::set_current_kind(k).index() as c_int,
        None => -1,
    }
}

/// The calling thread's tensor kind.
#[no_mangle]
pub extern "C" fn tensorpool_get_kind() -> c_int {
    tensorpool::current_kind().index() as c_int
}

/// The kind a name denotes (`"kv_cache"`, `"attention_weights"`, ... : the spellings
/// `TensorKind::from_str` accepts), or -1.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tensorpool_kind_from_name(name: *const c_char) -> c_int {
    if name.is_null() {
        return -1;
    }
    // SAFETY: the caller's contract.
    let s = unsafe { CStr::from_ptr(name) };
    s.to_str()
        .ok()
        .and_then(|s| s.parse::<TensorKind>().ok())
        .map_or(-1, |k| k.index() as c_int)
}

/// Release every cached block to the OS (see `TensorPool::trim`); returns the bytes released.
#[no_mangle]
pub extern "C" fn tensorpool_trim() -> usize {
    ALLOC.trim()
}

/// Write the statistics to `fd`: the table, or one JSON line if `json` is non-zero. Returns 0,
/// or -1 with errno set if the write failed.
#[no_mangle]
pub extern "C" fn tensorpool_write_stats(fd: c_int, json: c_int) -> c_int {
    let s = ALLOC.stats();
    let text = if json != 0 {
        let mut j = s.to_json();
        j.push('\n');
        j
    } else {
        s.to_string()
    };
    write_fd(fd, text.as_bytes())
}

/// Write the memory timeline (`TENSORPOOL_TIMELINE=1`, or recording started from Rust) to `fd`:
/// CSV if `format` is 0, an SVG chart if it is 1. Returns 0, or -1 with errno set (`EINVAL` for
/// another format).
#[no_mangle]
pub extern "C" fn tensorpool_write_timeline(fd: c_int, format: c_int) -> c_int {
    let tl = ALLOC.timeline();
    let text = match format {
        0 => tl.to_csv(),
        1 => tl.to_svg("tensorpool memory timeline", 900, 420),
        _ => {
            set_errno(libc::EINVAL);
            return -1;
        }
    };
    write_fd(fd, text.as_bytes())
}

/// Write the profile of live memory by call site (`TENSORPOOL_PROFILE=512K`) to `fd`: the
/// report's text if `format` is 0, JSON if 1, folded stacks (for flamegraph tools) if 2. With
/// profiling off, the text says so and the others are empty. Returns 0, or -1 with errno set
/// (`EINVAL` for another format).
#[no_mangle]
pub extern "C" fn tensorpool_write_profile(fd: c_int, format: c_int) -> c_int {
    if !(0..=2).contains(&format) {
        set_errno(libc::EINVAL);
        return -1;
    }
    let p = ALLOC.profile();
    let text = match format {
        0 => p.to_text(10),
        1 => p.to_json() + "\n",
        _ => p.to_folded(),
    };
    write_fd(fd, text.as_bytes())
}

/// Write the memory report, one self-contained HTML page (`TensorPool::report_html`), to `fd`.
/// Returns 0, or -1 with errno set.
#[no_mangle]
pub extern "C" fn tensorpool_write_report(fd: c_int) -> c_int {
    write_fd(fd, ALLOC.report_html().as_bytes())
}

/// Put a named marker on the memory timeline (`TensorPool::mark`), if it is recording. A null
/// or non-UTF-8 name is ignored.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tensorpool_mark(name: *const c_char) {
    if name.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    if let Ok(n) = unsafe { CStr::from_ptr(name) }.to_str() {
        ALLOC.mark(n);
    }
}

/// Enter the scope `name` inside the calling thread's current one (`TensorPool::push_scope`):
/// large blocks allocated until the matching `tensorpool_scope_pop` are attributed to it.
/// Returns the new depth (1 at the top), or -1 with errno set, changing nothing: `EINVAL` for a
/// null or empty name, `ENOSPC` when the scope table is full, `E2BIG` when scopes nest too deep.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tensorpool_scope_push(name: *const c_char) -> c_int {
    if name.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    match ALLOC.push_scope(bytes) {
        Ok(depth) => depth as c_int,
        Err(e) => {
            set_errno(match e {
                tensorpool::ScopeError::EmptyName => libc::EINVAL,
                tensorpool::ScopeError::Full => libc::ENOSPC,
                tensorpool::ScopeError::TooDeep => libc::E2BIG,
            });
            -1
        }
    }
}

thread_local! {
    /// What each `tensorpool_scope_enter_kind` of the thread changed, innermost last: a token
    /// of `TOKEN_BITS` each, `TOKENS_PER_WORD` to a word; entries past `HOOK_DEPTH` are counted
    /// only. Packed: glibc zeroes the library's static thread-locals in every new thread, just
    /// below its stack, and at 2.5 KiB they cost some programs' threads a page of stack each
    /// (the crate's `pystack::Shadow` says more).
    static HOOK_TOKENS: [core::cell::Cell<u64>; HOOK_DEPTH / TOKENS_PER_WORD] =
        const { [const { core::cell::Cell::new(0) }; HOOK_DEPTH / TOKENS_PER_WORD] };
    static HOOK_DEPTH_NOW: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Hook entries kept per thread.
const HOOK_DEPTH: usize = 256;
/// A token: the kind before the entry (its index, below 8) and, above it, whether the entry
/// entered a scope.
const TOKEN_BITS: usize = 4;
const TOKEN_PUSHED: u64 = 8;
const TOKENS_PER_WORD: usize = 64 / TOKEN_BITS;
const _: () = assert!(tensorpool::TensorKind::ALL.len() <= TOKEN_PUSHED as usize);

/// Keep `token` as hook entry `d` (below `HOOK_DEPTH`).
fn set_token(d: usize, token: u64) {
    let shift = (d % TOKENS_PER_WORD) * TOKEN_BITS;
    HOOK_TOKENS.with(|t| {
        let w = &t[d / TOKENS_PER_WORD];
        w.set(w.get() & !(0xf << shift) | token << shift);
    });
}

/// Hook entry `d`'s token.
fn token(d: usize) -> u64 {
    let shift = (d % TOKENS_PER_WORD) * TOKEN_BITS;
    HOOK_TOKENS.with(|t| t[d / TOKENS_PER_WORD].get() >> shift & 0xf)
}

/// Enter the scope `name` and make `kind` the calling thread's kind in one call, for hooks that
/// run on every module call (`tensorpool.torch`'s); `tensorpool_scope_leave_kind` undoes the
/// innermost. The thread's outermost entry also shares its scopes with threads outside all
/// scopes (`tensorpool_scope_share`): a model's operators' worker threads. Returns the new
/// hook depth, or -1 with errno `EINVAL` (changing nothing) for a null name or an unknown kind.
/// A scope that cannot be entered (a full table, nesting too deep) is counted as refused and
/// only the kind changes.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tensorpool_scope_enter_kind(name: *const c_char, kind: c_int) -> c_int {
    let k = usize::try_from(kind).ok().and_then(TensorKind::from_index);
    let (false, Some(k)) = (name.is_null(), k) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    // SAFETY: the caller's contract.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    let d = HOOK_DEPTH_NOW.get();
    if d == 0 {
        ALLOC.share_scopes(true);
    }
    let pushed = ALLOC.push_scope(bytes).is_ok();
    let prev = tensorpool::set_current_kind(k).index() as u64;
    if d < HOOK_DEPTH {
        set_token(d, prev | if pushed { TOKEN_PUSHED } else { 0 });
    } else if pushed {
        // Not kept: undo the scope now rather than leave it unbalanced.
        ALLOC.pop_scope();
    }
    HOOK_DEPTH_NOW.set(d + 1);
    (d + 1) as c_int
}

/// Undo the innermost `tensorpool_scope_enter_kind` of the thread: its kind comes back and its
/// scope, if entered, is left. Returns the hook depth left, or -1 with errno `EINVAL` if there
/// was none.
#[no_mangle]
pub extern "C" fn tensorpool_scope_leave_kind() -> c_int {
    let d = HOOK_DEPTH_NOW.get();
    if d == 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    HOOK_DEPTH_NOW.set(d - 1);
    if d <= HOOK_DEPTH {
        let token = token(d - 1);
        if let Some(k) = TensorKind::from_index((token & (TOKEN_PUSHED - 1)) as usize) {
            tensorpool::set_current_kind(k);
        }
        if token & TOKEN_PUSHED != 0 {
            ALLOC.pop_scope();
        }
    }
    (d - 1) as c_int
}

/// Keep (`on` non-zero) or stop keeping the Python stacks of sampled allocations
/// (`TensorPool::python_stacks`; call it from Python, with the interpreter's lock held).
/// Returns 1 when every thread is covered (Python 3.12+), 0 when the calling thread is, or -1
/// with errno `ENOSYS` in a process without a Python interpreter.
#[no_mangle]
pub extern "C" fn tensorpool_python_stacks(on: c_int) -> c_int {
    match ALLOC.python_stacks(on != 0) {
        Ok(all) => all as c_int,
        Err(_) => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

/// Leave the calling thread's innermost scope. Returns the depth left (0: outside every
/// scope), or -1 with errno `EINVAL` if no scope was entered.
#[no_mangle]
pub extern "C" fn tensorpool_scope_pop() -> c_int {
    match ALLOC.pop_scope() {
        Some(d) => d as c_int,
        None => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}

/// The calling thread's scope depth (0: outside every scope).
#[no_mangle]
pub extern "C" fn tensorpool_scope_depth() -> c_int {
    ALLOC.scope_depth() as c_int
}

/// Share the calling thread's scopes with every thread outside all scopes (`on` non-zero), or
/// stop (`TensorPool::share_scopes`): worker threads then allocate into the calling thread's
/// current scope.
#[no_mangle]
pub extern "C" fn tensorpool_scope_share(on: c_int) {
    ALLOC.share_scopes(on != 0);
}

/// Lower every scope's peaks to its live bytes now (`TensorPool::reset_scope_peaks`).
#[no_mangle]
pub extern "C" fn tensorpool_scope_reset_peaks() {
    ALLOC.reset_scope_peaks();
}

/// Write the scopes and their bytes (`TensorPool::scopes`) to `fd`: the table if `format` is
/// 0, JSON if 1. Returns 0, or -1 with errno set (`EINVAL` for another format).
#[no_mangle]
pub extern "C" fn tensorpool_write_scopes(fd: c_int, format: c_int) -> c_int {
    let text = match format {
        0 => ALLOC.scopes().to_string(),
        1 => ALLOC.scopes().to_json() + "\n",
        _ => {
            set_errno(libc::EINVAL);
            return -1;
        }
    };
    write_fd(fd, text.as_bytes())
}

/// Write all of `bytes` to `fd`, retrying on `EINTR`; 0, or -1 with errno set.
fn write_fd(fd: c_int, mut rest: &[u8]) -> c_int {
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer of its length.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            // SAFETY: as in `set_errno`.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return -1;
        }
        rest = &rest[n as usize..];
    }
    0
}

// ---------------------------------------------------------------------------------------------
// glibc's introspection calls, with their glibc meaning where one fits
// ---------------------------------------------------------------------------------------------

/// glibc's `struct mallinfo2` (every field a `size_t`).
#[repr(C)]
#[derive(Default)]
pub struct Mallinfo2 {
    /// Memory the allocator holds for blocks, live or free: `uordblks + fordblks`.
    pub arena: usize,
    /// Unused by tensorpool (glibc: free chunks).
    pub ordblks: usize,
    /// Unused (glibc: free fastbin blocks).
    pub smblks: usize,
    /// The arena's mappings (regions).
    pub hblks: usize,
    /// Bytes the arena has mapped (address space, resident or not).
    pub hblkhd: usize,
    /// Unused (glibc: always 0).
    pub usmblks: usize,
    /// Unused (glibc: bytes in free fastbin blocks).
    pub fsmblks: usize,
    /// Bytes of live blocks, every kind.
    pub uordblks: usize,
    /// Free bytes kept resident for reuse: cached large-block memory, free small blocks on the
    /// heaps' pages and large blocks in thread caches.
    pub fordblks: usize,
    /// Unused (glibc: releasable top chunk).
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (every field an `int`; values saturate at `INT_MAX`, where glibc's
/// wrap).
#[repr(C)]
#[derive(Default)]
pub struct Mallinfo {
    /// See `Mallinfo2`, field by field.
    pub arena: c_int,
    /// See `Mallinfo2`.
    pub ordblks: c_int,
    /// See `Mallinfo2`.
    pub smblks: c_int,
    /// See `Mallinfo2`.
    pub hblks: c_int,
    /// See `Mallinfo2`.
    pub hblkhd: c_int,
    /// See `Mallinfo2`.
    pub usmblks: c_int,
    /// See `Mallinfo2`.
    pub fsmblks: c_int,
    /// See `Mallinfo2`.
    pub uordblks: c_int,
    /// See `Mallinfo2`.
    pub fordblks: c_int,
    /// See `Mallinfo2`.
    pub keepcost: c_int,
}

/// `mallinfo2()`: the statistics in glibc's shape (`uordblks` live, `fordblks` free but resident,
/// `hblks`/`hblkhd` the arena's mappings and mapped bytes).
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = ALLOC.stats();
    let live = s.total.live_bytes as usize;
    let free = (s.total.cached_bytes + s.total.hot_bytes) as usize;
    Mallinfo2 {
        arena: live + free,
        hblks: s.arena.regions as usize,
        hblkhd: s.arena.mapped_bytes as usize,
        uordblks: live,
        fordblks: free,
        ..Mallinfo2::default()
    }
}

/// `mallinfo()`: `mallinfo2` in `int`s, saturated.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let i = |v: usize| v.min(c_int::MAX as usize) as c_int;
    Mallinfo {
        arena: i(m.arena),
        hblks: i(m.hblks),
        hblkhd: i(m.hblkhd),
        uordblks: i(m.uordblks),
        fordblks: i(m.fordblks),
        ..Mallinfo::default()
    }
}

/// `malloc_trim(pad)`: return every cached page to the OS (`TensorPool::trim`; `pad` is ignored:
/// nothing is kept at a heap top). 1 if memory was released, else 0, as glibc.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(ALLOC.trim() > 0)
}

/// `malloc_stats()`: the statistics table on stderr, as glibc prints its own there.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    let _ = tensorpool_write_stats(2, 0);
}

/// `malloc_info(options, stream)`: the statistics as XML on `stream`, per kind and in total.
/// `options` must be 0 (else `EINVAL`, -1, as glibc). Returns 0, or -1 if the write failed.
///
/// # Safety
/// `stream` is a valid, open `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 || stream.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let s = ALLOC.stats();
    let mut x = String::from("<malloc version=\"tensorpool-1\">\n");
    let pool = |x: &mut String, tag: &str, name: &str, p: &tensorpool::PoolStats| {
        x.push_str(&format!(
            "<{tag} name=\"{name}\"><requests>{}</requests><hits>{}</hits>\
             <live bytes=\"{}\"/><cached bytes=\"{}\"/><hot bytes=\"{}\"/>\
             <peak-live bytes=\"{}\"/><returned bytes=\"{}\"/></{tag}>\n",
            p.requests,
            p.hits,
            p.live_bytes,
            p.cached_bytes,
            p.hot_bytes,
            p.peak_live_bytes,
            p.evicted_bytes
        ));
    };
    for (k, p) in TensorKind::ALL.iter().zip(&s.kinds) {
        pool(&mut x, "kind", k.name(), p);
    }
    pool(&mut x, "total", "all", &s.total);
    x.push_str(&format!(
        "<arena><mapped bytes=\"{}\"/><regions count=\"{}\"/><dirty bytes=\"{}\"/>\
         <clean bytes=\"{}\"/><huge-pages enabled=\"{}\" resident=\"{}\" huge=\"{}\" \
         cuts=\"{}\"/></arena>\n</malloc>\n",
        s.arena.mapped_bytes,
        s.arena.regions,
        s.arena.dirty_bytes,
        s.arena.clean_bytes,
        u8::from(s.arena.huge_pages),
        s.huge_pages.map_or(0, |h| h.resident_bytes),
        s.huge_pages.map_or(0, |h| h.huge_bytes),
        s.arena.huge_page_cuts
    ));
    // SAFETY: `stream` is a valid FILE (the caller's contract) and `x` a buffer of its length.
    let n = unsafe { libc::fwrite(x.as_ptr().cast(), 1, x.len(), stream) };
    if n == x.len() {
        0
    } else {
        -1
    }
}
