//! Python stacks for sampled allocations, read without calling into the interpreter from
//! inside `malloc`.
//!
//! memray's way: a *shadow stack*. Once installed (`install`, from Python: `tensorpool.
//! python_stacks()`), CPython calls `on_event` at every Python function call and return of the
//! thread (`PyEval_SetProfile`; every thread with `PyEval_SetProfileAllThreads`, Python 3.12+).
//! The callback runs with the interpreter's lock held and outside any allocator path, so it may
//! use the C API: at a function's first call it interns its code object (qualified name, file,
//! first line, copied into a static table; the code object is kept alive, so its address is
//! never reused for another), and it pushes the function's id and the frame onto the
//! thread's own array (`Shadow`, mapped at its first call); a return pops. The sampler
//! (`capture`, inside `malloc`) only reads that array and asks each frame its current line
//! with `PyFrame_GetLineNumber`, which computes it from the frame and the code object's line
//! table and neither allocates nor touches reference counts.
//!
//! **Why this is safe without the GIL.** Allocations often come from a thread that released the
//! GIL (PyTorch's operators do). The frames on a thread's shadow stack are that thread's own
//! executing frames: only that thread creates, changes or finishes them, and it is inside
//! `malloc`, so they are alive and still while they are read. Nothing else is read. The same
//! holds in a free-threaded 3.13 build (frames stay per thread). What is not safe, and not
//! done: reading another thread's frames, or a frame after its function returned.
//!
//! Cost: the callback runs at every Python call and return (tens of nanoseconds; a Python call
//! costs about a hundred), so it is opt-in, for profiling runs. Setting it replaces another
//! profile function (cProfile's), as `sys.setprofile` does.

use crate::sync::plain::{AtomicPtr, AtomicUsize};
use crate::sync::{shared_static, SpinLock};
use core::cell::Cell;
use core::ffi::{c_char, c_int, c_long, c_void, CStr};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Python frames kept per sample (innermost first).
pub const PYTHON_FRAMES: usize = 16;
/// Frames a thread's shadow stack holds (deeper calls are counted, not kept).
const SHADOW: usize = 128;
/// Distinct Python functions that can be named.
const FUNCS: usize = 16384;
const SLOTS: usize = FUNCS * 2;
const NAME: usize = 96;
const FILE: usize = 152;

type Trace = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *mut c_void) -> c_int;
type SetProfile = unsafe extern "C" fn(Option<Trace>, *mut c_void);

/// The C API functions used, found with `dlsym` at installation.
struct Api {
    set_profile: SetProfile,
    set_profile_all: Option<SetProfile>,
    frame_code: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    frame_line: unsafe extern "C" fn(*mut c_void) -> c_int,
    getattr: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void,
    utf8: unsafe extern "C" fn(*mut c_void, *mut isize) -> *const c_char,
    long: unsafe extern "C" fn(*mut c_void) -> c_long,
    decref: unsafe extern "C" fn(*mut c_void),
    err_clear: unsafe extern "C" fn(),
}

/// One named function: its code object (kept alive) and what the report prints.
struct Func {
    code: AtomicUsize,
    line: AtomicUsize,
    name: [AtomicUsize; NAME / 8],
    file: [AtomicUsize; FILE / 8],
}

impl Func {
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Func = Func {
        code: AtomicUsize::new(0),
        line: AtomicUsize::new(0),
        name: [const { AtomicUsize::new(0) }; NAME / 8],
        file: [const { AtomicUsize::new(0) }; FILE / 8],
    };
}

/// The API, once installed (null before).
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static API: AtomicPtr<Api> = AtomicPtr::new(core::ptr::null_mut());
static TABLE: [Func; FUNCS] = [Func::EMPTY; FUNCS];
/// Function ids by code object address (0: empty; ids start at 1).
static SLOT: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static NEXT: AtomicUsize = AtomicUsize::new(1);
/// Odd while the shadow stacks are kept; bumped at every installation and removal, so that a
/// thread's stack from an earlier period (its frames may have returned since) is never read.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static PERIOD: AtomicUsize = AtomicUsize::new(0);

shared_static! {
    /// Held to name a new function (lookups take no lock).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static NAMING: SpinLock<()> = SpinLock::new(());
}

/// A thread's shadow stack: the function ids and frames of its Python calls, outermost first.
///
/// Mapped at the thread's first Python call once stacks are kept, rather than in static TLS:
/// glibc zeroes a library's static TLS in every new thread, just below the thread's stack, and
/// these 1.5 KiB, in every thread of every process, pushed the stacks of mimalloc-bench's
/// larsonN (whose threads each start the next) to 12 KiB resident each against mimalloc's 8:
/// 3 MiB in all.
struct Shadow {
    ids: [u32; SHADOW],
    frames: [usize; SHADOW],
    /// The next on the spare list.
    next: *mut Shadow,
}

/// Shadow stacks of threads that exited, for the next threads (linked through `next`).
struct Spares(*mut Shadow);

// SAFETY: a spare shadow stack belongs to no thread; the list is only touched under its lock.
unsafe impl Send for Spares {}

shared_static! {
    /// The spare shadow stacks.
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static SPARES: SpinLock<Spares> = SpinLock::new(Spares(core::ptr::null_mut()));
}

thread_local! {
    /// The thread's Python call depth since installation (entries past `SHADOW` not kept).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The `PERIOD` the thread's stack belongs to.
    static MINE: Cell<usize> = const { Cell::new(0) };
    /// The thread's shadow stack (null before its first kept call, or if none could be mapped).
    static STACK: Cell<*mut Shadow> = const { Cell::new(core::ptr::null_mut()) };
}

/// The calling thread's shadow stack: its own, a spare one, or a new mapping (null if the OS
/// refuses one: calls are then counted, not kept).
fn own_stack() -> *mut Shadow {
    let s = STACK.get();
    if !s.is_null() {
        return s;
    }
    let s = SPARES.with(|l| {
        let s = l.0;
        if !s.is_null() {
            // SAFETY: a spare stack is the list's alone, under its lock.
            l.0 = unsafe { (*s).next };
        }
        s
    });
    let s = if s.is_null() {
        crate::os::map(core::mem::size_of::<Shadow>()).cast::<Shadow>()
    } else {
        // SAFETY: the spare is ours now. Cleared: a thread that gets its stack below calls it
        // entered without one must not find another thread's frames there.
        unsafe { s.write_bytes(0, 1) };
        s
    };
    STACK.set(s);
    s
}

/// The calling thread is exiting: its shadow stack, if it has one, goes to the spare list (a
/// thread that never allocates through tensorpool is not seen exiting: its page stays mapped).
pub(crate) fn thread_exit() {
    let s = STACK.replace(core::ptr::null_mut());
    if !s.is_null() {
        SPARES.with(|l| {
            // SAFETY: the stack was this thread's alone; from here it is the list's.
            unsafe { (*s).next = l.0 };
            l.0 = s;
        });
    }
}

fn find<T>(name: &CStr) -> Option<T> {
    let p = crate::os::symbol(name);
    // SAFETY: `T` is the C function type CPython documents for `name`; a non-null address
    // from dlsym is that function.
    (!p.is_null()).then(|| unsafe { core::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// Why the shadow stack could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonStacksError {
    /// No Python interpreter in the process (a C API function was not found).
    NoInterpreter,
}

impl core::fmt::Display for PythonStacksError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no Python interpreter in this process (its C API was not found)")
    }
}

impl std::error::Error for PythonStacksError {}

/// Start (`on`) or stop keeping the Python shadow stack, for every thread where the interpreter
/// allows (3.12+), else for the calling thread. Call with the interpreter's lock held (from
/// Python). Whether all threads are covered.
pub(crate) fn install(on: bool) -> Result<bool, PythonStacksError> {
    let mut api = API.load(Acquire);
    if api.is_null() {
        let missing = PythonStacksError::NoInterpreter;
        let a = Api {
            set_profile: find(c"PyEval_SetProfile").ok_or(missing)?,
            set_profile_all: find(c"PyEval_SetProfileAllThreads"),
            frame_code: find(c"PyFrame_GetCode").ok_or(missing)?,
            frame_line: find(c"PyFrame_GetLineNumber").ok_or(missing)?,
            getattr: find(c"PyObject_GetAttrString").ok_or(missing)?,
            utf8: find(c"PyUnicode_AsUTF8AndSize").ok_or(missing)?,
            long: find(c"PyLong_AsLong").ok_or(missing)?,
            decref: find(c"Py_DecRef").ok_or(missing)?,
            err_clear: find(c"PyErr_Clear").ok_or(missing)?,
        };
        // Leaked: the callback may run until the process ends.
        let fresh = Box::into_raw(Box::new(a));
        match API.compare_exchange(core::ptr::null_mut(), fresh, Release, Acquire) {
            Ok(_) => api = fresh,
            Err(other) => {
                // SAFETY: `fresh` was never published.
                drop(unsafe { Box::from_raw(fresh) });
                api = other;
            }
        }
    }
    // SAFETY: a published `Api` is never freed.
    let api = unsafe { &*api };
    let f: Option<Trace> = if on { Some(on_event) } else { None };
    // Odd while on. Turning on starts every thread's stack afresh at its next event; turning
    // on again (another thread joining, on Python 3.11) leaves the others' stacks be.
    let p = PERIOD.load(Relaxed);
    match (on, p & 1 == 1) {
        (true, false) => PERIOD.store(p + 1, Relaxed),
        (false, true) => PERIOD.store(p + 1, Relaxed),
        _ => {}
    }
    // SAFETY: CPython's documented functions, called with the interpreter's lock held (the
    // caller's contract: this runs from Python).
    unsafe {
        match api.set_profile_all {
            Some(all) => all(f, core::ptr::null_mut()),
            None => (api.set_profile)(f, core::ptr::null_mut()),
        }
    }
    Ok(api.set_profile_all.is_some())
}

/// CPython's profile callback: a call pushes the function, a return pops it.
unsafe extern "C" fn on_event(
    _obj: *mut c_void,
    frame: *mut c_void,
    what: c_int,
    _arg: *mut c_void,
) -> c_int {
    const CALL: c_int = 0;
    const RETURN: c_int = 3;
    let period = PERIOD.load(Relaxed);
    if MINE.get() != period {
        MINE.set(period);
        DEPTH.set(0);
    }
    match what {
        CALL => {
            let d = DEPTH.get();
            let stack = if d < SHADOW {
                own_stack()
            } else {
                core::ptr::null_mut()
            };
            if !stack.is_null() {
                // SAFETY: CPython passes the frame being entered, with its lock held.
                let id = unsafe { intern(frame) };
                // SAFETY: the stack is this thread's alone.
                unsafe {
                    (*stack).ids[d] = id as u32;
                    (*stack).frames[d] = frame as usize;
                }
            }
            DEPTH.set(d + 1);
        }
        // Frames entered before installation return without a push: the depth stays at 0.
        RETURN => DEPTH.set(DEPTH.get().saturating_sub(1)),
        _ => {}
    }
    0
}

/// The id of the frame's function, named at its first call (0 if the table is full).
///
/// # Safety
/// `frame` is a live frame; the interpreter's lock is held; the API is installed.
unsafe fn intern(frame: *mut c_void) -> usize {
    // SAFETY: installed before CPython can call the callback; never freed.
    let api = unsafe { &*API.load(Acquire) };
    // SAFETY: the caller's contract; `PyFrame_GetCode` returns a new reference.
    let code = unsafe { (api.frame_code)(frame) };
    if code.is_null() {
        // SAFETY: the lock is held.
        unsafe { (api.err_clear)() };
        return 0;
    }
    let key = code as usize;
    if let Some(id) = lookup(key) {
        // SAFETY: the reference `PyFrame_GetCode` returned; the table holds its own.
        unsafe { (api.decref)(code) };
        return id;
    }
    // Named outside the table's lock (the C API allocates); a race to name the same function
    // twice keeps the first and drops the second's reference.
    let mut name = [0u8; NAME];
    let mut file = [0u8; FILE];
    // SAFETY: `code` is a live code object and the lock is held.
    let line = unsafe {
        text_attr(api, code, c"co_qualname", &mut name, false);
        text_attr(api, code, c"co_filename", &mut file, true);
        let l = (api.getattr)(code, c"co_firstlineno".as_ptr());
        let n = if l.is_null() { 0 } else { (api.long)(l) };
        if !l.is_null() {
            (api.decref)(l);
        }
        (api.err_clear)();
        n.max(0) as usize
    };
    let id = NAMING.with(|_| {
        if let Some(id) = lookup(key) {
            return Some((id, false));
        }
        let id = NEXT.load(Relaxed);
        if id >= FUNCS {
            return None;
        }
        let f = &TABLE[id];
        f.code.store(key, Relaxed);
        f.line.store(line, Relaxed);
        store_words(&f.name, &name);
        store_words(&f.file, &file);
        let mut s = (key >> 4) & (SLOTS - 1);
        while SLOT[s].load(Relaxed) != 0 {
            s = (s + 1) & (SLOTS - 1);
        }
        NEXT.store(id + 1, Release);
        SLOT[s].store(id, Release);
        Some((id, true))
    });
    match id {
        // The table keeps the reference: the address stays this function's.
        Some((id, true)) => id,
        Some((id, false)) => {
            // SAFETY: as above.
            unsafe { (api.decref)(code) };
            id
        }
        None => {
            // SAFETY: as above.
            unsafe { (api.decref)(code) };
            0
        }
    }
}

fn lookup(key: usize) -> Option<usize> {
    let mut s = (key >> 4) & (SLOTS - 1);
    loop {
        let id = SLOT[s].load(Acquire);
        if id == 0 {
            return None;
        }
        if TABLE[id].code.load(Relaxed) == key {
            return Some(id);
        }
        s = (s + 1) & (SLOTS - 1);
    }
}

/// Copy a string attribute of `obj` into `out` (its tail if `tail` and it is too long).
///
/// # Safety
/// `obj` is live and the interpreter's lock is held.
unsafe fn text_attr(api: &Api, obj: *mut c_void, attr: &CStr, out: &mut [u8], tail: bool) {
    // SAFETY: the caller's contract; a new reference or null.
    let v = unsafe { (api.getattr)(obj, attr.as_ptr()) };
    if v.is_null() {
        // SAFETY: the lock is held.
        unsafe { (api.err_clear)() };
        return;
    }
    let mut len: isize = 0;
    // SAFETY: `v` is live; the UTF-8 buffer lives as long as `v`.
    let p = unsafe { (api.utf8)(v, &mut len) };
    if !p.is_null() && len > 0 {
        // SAFETY: CPython returned `len` bytes at `p`.
        let b = unsafe { core::slice::from_raw_parts(p as *const u8, len as usize) };
        let keep = b.len().min(out.len() - 1);
        let from = if tail { b.len() - keep } else { 0 };
        out[..keep].copy_from_slice(&b[from..from + keep]);
    }
    // SAFETY: the reference `getattr` returned; the lock is held.
    unsafe {
        (api.decref)(v);
        (api.err_clear)();
    }
}

fn store_words(words: &[AtomicUsize], bytes: &[u8]) {
    for (w, c) in words.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        w.store(usize::from_le_bytes(b), Relaxed);
    }
}

fn load_words(words: &[AtomicUsize]) -> String {
    let mut v = Vec::with_capacity(words.len() * 8);
    for w in words {
        v.extend_from_slice(&w.load(Relaxed).to_le_bytes());
    }
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Copy the calling thread's Python frames, innermost first, as (function id, line) into
/// `out`; how many (0 when not installed or outside Python code). Allocates nothing and calls
/// only `PyFrame_GetLineNumber` on the thread's own live frames (see the module docs).
pub(crate) fn capture(out: &mut [(u32, u32); PYTHON_FRAMES]) -> usize {
    let api = API.load(Acquire);
    let period = PERIOD.load(Relaxed);
    if api.is_null() || period & 1 == 0 || MINE.get() != period {
        return 0;
    }
    // SAFETY: a published `Api` is never freed.
    let api = unsafe { &*api };
    let stack = STACK.get();
    if stack.is_null() {
        return 0;
    }
    // SAFETY: the stack is this thread's alone.
    let stack = unsafe { &*stack };
    let d = DEPTH.get().min(SHADOW);
    let mut n = 0;
    for i in (0..d).rev().take(PYTHON_FRAMES) {
        let f = stack.frames[i] as *mut c_void;
        if f.is_null() {
            // Entered before the thread had a stack.
            continue;
        }
        // SAFETY: a frame on this thread's shadow stack is one of its executing frames, alive
        // and unchanged while the thread is in here.
        let line = unsafe { (api.frame_line)(f) };
        out[n] = (stack.ids[i], line.max(0) as u32);
        n += 1;
    }
    n
}

/// The function `id` names: (qualified name, file, first line). Allocates.
pub(crate) fn function(id: u32) -> (String, String, u32) {
    let id = id as usize;
    if id == 0 || id >= NEXT.load(Acquire) {
        return ("?".into(), String::new(), 0);
    }
    let f = &TABLE[id];
    (
        load_words(&f.name),
        load_words(&f.file),
        f.line.load(Relaxed) as u32,
    )
}
