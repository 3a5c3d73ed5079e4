//! C++'s replaceable `operator new` and `operator delete`, every form (plain, array, nothrow,
//! sized, aligned; Itanium ABI names), served by tensorpool directly.
//!
//! Without them a C++ program's `new` goes through libstdc++'s own `operator new`, which calls
//! `malloc` in a loop that checks the new-handler: 13 instructions a call before ours start
//! (callgrind, mimalloc-bench's alloc-test), and `delete` another 3. mimalloc, jemalloc and
//! tcmalloc export these symbols for the same reason.
//!
//! Failure keeps C++'s contract, which Rust cannot: the throwing forms must call the
//! new-handler and throw `std::bad_alloc`. So where tensorpool refuses, the request goes to the
//! next definition of the same symbol (`dlsym(RTLD_NEXT)`: libstdc++'s or libc++'s), which calls
//! `malloc` or `aligned_alloc` (ours again) under its handler loop and throws; the exception
//! passes through our frame, hence `extern "C-unwind"`. The nothrow forms do the same (theirs
//! return null). Looked up at the failure, not at load: Python loads libstdc++ with the first
//! C++ extension, after this library's constructor ran. Where there is no next definition, a
//! throwing form stops the process with a message (returning null would be undefined behaviour
//! for its caller) and a nothrow form returns null.

// The Itanium ABI's names are the symbols.
#![allow(non_snake_case)]

use crate::{ALLOC, MIN_ALIGN};
use core::ffi::{c_void, CStr};

/// The next definition of `name` after this library's, or null.
#[cold]
fn next(name: &CStr) -> *mut c_void {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT searches the objects loaded after this one.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// No C++ runtime to throw `bad_alloc` for us: say so and stop, as an uncaught one would.
#[cold]
fn no_runtime() -> ! {
    let msg = b"tensorpool: out of memory in a C++ operator new, and no C++ runtime to throw std::bad_alloc: aborting\n";
    // SAFETY: writing a static buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// # Safety
/// `p` is null or a live block of this library.
#[inline(always)]
unsafe fn put(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { ALLOC.free_raw(p.cast()) }
}

/// Every `operator new` form: `size`, then the form's other arguments (the alignment of the
/// aligned forms, which `align` names; `nothrow_t`'s address). Where `malloc`'s alignment will
/// do, the thread's cached block inline, as `malloc` takes it; anything else in `slow`, reached
/// by a tail call (a cold path inline kept three registers saved on the fast path): tensorpool's
/// whole path, and where that refuses, the next definition of the same symbol (see the module's
/// documentation), or, without one, null for a nothrow form and `no_runtime` for a throwing one.
macro_rules! new_forms {
    ($($name:ident($($arg:ident: $ty:ty),*), $sym:literal, align $align:expr, nothrow $nothrow:literal;)*) => {$(
        /// An `operator new` form.
        #[no_mangle]
        pub extern "C-unwind" fn $name(size: usize $(, $arg: $ty)*) -> *mut c_void {
            #[cold]
            #[inline(never)]
            extern "C-unwind" fn slow(size: usize $(, $arg: $ty)*) -> *mut c_void {
                let p = ALLOC.alloc_raw(size, ($align).max(MIN_ALIGN), false);
                if !p.is_null() {
                    return p.cast();
                }
                let f = next($sym);
                if f.is_null() {
                    if $nothrow {
                        return f;
                    }
                    no_runtime()
                }
                type Form = unsafe extern "C-unwind" fn(usize $(, $ty)*) -> *mut c_void;
                // SAFETY: `f` is another library's definition of the same symbol, of this
                // signature.
                unsafe { core::mem::transmute::<*mut c_void, Form>(f)(size $(, $arg)*) }
            }
            if $align <= MIN_ALIGN {
                let p = ALLOC.alloc_cached(size);
                if !p.is_null() {
                    return p.cast();
                }
            }
            slow(size $(, $arg)*)
        }
    )*};
}

new_forms! {
    _Znwm(), c"_Znwm", align MIN_ALIGN, nothrow false;
    _Znam(), c"_Znam", align MIN_ALIGN, nothrow false;
    _ZnwmSt11align_val_t(align: usize), c"_ZnwmSt11align_val_t", align align, nothrow false;
    _ZnamSt11align_val_t(align: usize), c"_ZnamSt11align_val_t", align align, nothrow false;
    _ZnwmRKSt9nothrow_t(tag: *const c_void), c"_ZnwmRKSt9nothrow_t", align MIN_ALIGN, nothrow true;
    _ZnamRKSt9nothrow_t(tag: *const c_void), c"_ZnamRKSt9nothrow_t", align MIN_ALIGN, nothrow true;
    _ZnwmSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void),
        c"_ZnwmSt11align_val_tRKSt9nothrow_t", align align, nothrow true;
    _ZnamSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void),
        c"_ZnamSt11align_val_tRKSt9nothrow_t", align align, nothrow true;
}

/// Every `operator delete` form takes the block first; what follows (the size of a sized
/// delete, the alignment, `nothrow`) tensorpool does not need: the block's page or descriptor
/// knows both.
macro_rules! delete_forms {
    ($($name:ident($($arg:ident),*);)*) => {$(
        /// An `operator delete` form.
        ///
        /// # Safety
        /// `p` is null or a live block of this library.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: usize)*) {
            $(let _ = $arg;)*
            // SAFETY: the caller's contract.
            unsafe { put(p) }
        }
    )*};
}

delete_forms! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size);
    _ZdaPvm(size);
    _ZdlPvSt11align_val_t(align);
    _ZdaPvSt11align_val_t(align);
    _ZdlPvmSt11align_val_t(size, align);
    _ZdaPvmSt11align_val_t(size, align);
    _ZdlPvRKSt9nothrow_t(tag);
    _ZdaPvRKSt9nothrow_t(tag);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align, tag);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align, tag);
}
