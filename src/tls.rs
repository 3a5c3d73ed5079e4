//! The thread-locals the fast paths read at every allocation and free, reached without a call
//! to `__tls_get_addr`.
//!
//! Rust's `thread_local!` in a shared library uses the general-dynamic model (stable Rust cannot
//! choose another): every access calls `__tls_get_addr` through the PLT. Under `LD_PRELOAD`
//! that was a third of a small malloc/free pair: mimalloc-bench's glibc-simple took 2.54-2.80 s
//! with it and 1.90-2.08 s with these (mimalloc 1.61-1.89 s, three interleaved runs). jemalloc
//! and mimalloc build their libraries with `-ftls-model=initial-exec` for the same reason; that
//! model needs static TLS, which a library opened with `dlopen` may not get
//! (`tests/preload.rs` opens it so), so these use TLS descriptors (`-mtls-dialect=gnu2`): a call
//! to a resolver that, for a library loaded at start-up (preloaded, or linked), is two
//! instructions returning the variable's offset from the thread pointer, and for one opened with
//! `dlopen` allocates dynamic TLS as `__tls_get_addr` would. In an executable the linker relaxes
//! the sequence to a constant offset.
//!
//! `fast_thread_local!` declares a module with `addr()`, the address of the calling thread's
//! value (constant per thread). Only with the `tls-desc` feature, which the preload library
//! turns on: in an executable `thread_local!` is already two instructions (the linker relaxes it
//! to a constant offset from the thread pointer), and the descriptor sequence, relaxed the same
//! way, kept two more and a stack adjustment (callgrind: 89.9 M -> 98.1 M instructions for the
//! core bench's million malloc/free pairs). Without the feature, and where the assembly does
//! not apply (another architecture or OS, loom models), it is a plain `thread_local!`.
//!
//! The descriptor's call still cost `malloc` a call, a return and a stack frame around them.
//! Where the library's TLS lies in the static block, as it always does for a library loaded
//! with the program, the variable's distance from the thread pointer is the same in every
//! thread: `learn()` (at each thread's first allocation) reads it from the descriptor, and
//! `static_addr()` is then a load of that distance added to the thread pointer, as
//! initial-exec code would do, while a library opened with `dlopen` and given dynamic TLS never
//! learns one and keeps the call (`static_addr()` says `None`, and the fast path leaves the
//! request to the slow one). The preload library's `malloc`: 24 -> 21 instructions executed,
//! none of them a call; glibc-simple 1.78 -> 1.65 s (medians of five alternated runs; mimalloc
//! 1.66, initial-exec code 1.62).

/// Declare `$vis mod $name` with `fn addr() -> *mut $ty`: the calling thread's `$ty`, all zero
/// bytes at thread start (`zeroed`; zero must be a valid `$ty`) or the address of the static
/// `$init` (`ptr $init`; `$ty` a raw pointer); `fn static_addr() -> Option<*mut $ty>`, the same
/// without a call once `fn learn()` has found it in the static TLS block.
macro_rules! fast_thread_local {
    ($(#[$m:meta])* $vis:vis mod $name:ident: $ty:ty = zeroed;) => {
        $(#[$m])*
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::tls::fast_thread_local!(@asm $name, $ty, ".tbss", "@nobits", "6",
                core::mem::size_of::<$ty>(), ".zero {size}");
            // SAFETY: the caller of the macro promises zero is a valid `$ty`.
            $crate::tls::fast_thread_local!(@fallback $ty, unsafe { core::mem::zeroed() });
        }
    };
    ($(#[$m:meta])* $vis:vis mod $name:ident: $ty:ty = ptr $init:path;) => {
        $(#[$m])*
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::tls::fast_thread_local!(@asm $name, $ty, ".tdata", "@progbits", "3", 8,
                ".quad {init}", init = sym $init);
            $crate::tls::fast_thread_local!(@fallback $ty, &$init as *const _ as $ty);
        }
    };
    // The thread's value as a TLS symbol of this object, and its address through the
    // descriptor.
    (@asm $name:ident, $ty:ty, $sect:literal, $kind:literal, $align:literal, $size:expr,
        $data:literal $(, $opnd:ident = sym $sym:path)?) => {
        #[cfg(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom)))]
        core::arch::global_asm!(
            concat!(".pushsection ", $sect, ".tensorpool_tls_", stringify!($name), ",\"awT\",", $kind),
            concat!(".p2align ", $align),
            concat!(".globl tensorpool_tls_", stringify!($name)),
            concat!(".hidden tensorpool_tls_", stringify!($name)),
            concat!(".type tensorpool_tls_", stringify!($name), ",@object"),
            concat!(".size tensorpool_tls_", stringify!($name), ",{size}"),
            concat!("tensorpool_tls_", stringify!($name), ":"),
            $data,
            ".popsection",
            size = const $size,
            $($opnd = sym $sym,)?
        );
        /// The calling thread's value (its address is constant for the thread's life).
        #[cfg(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom)))]
        #[inline(always)]
        pub(crate) fn addr() -> *mut $ty {
            let a: usize;
            // SAFETY: the TLS descriptor sequence for a symbol of this object (the resolver
            // preserves every register but `rax`), then the thread pointer read from the TCB's
            // first word; nothing is written.
            unsafe {
                core::arch::asm!(
                    concat!("lea rax, [rip + tensorpool_tls_", stringify!($name), "@TLSDESC]"),
                    concat!("call qword ptr [rax + tensorpool_tls_", stringify!($name), "@TLSCALL]"),
                    "add rax, qword ptr fs:[0]",
                    out("rax") a,
                    options(pure, readonly),
                );
            }
            a as *mut $ty
        }

        /// The variable's distance from the thread pointer, the same in every thread, once
        /// `learn` has seen the library's TLS in the static block; 0 before, and for good where
        /// it is not.
        #[cfg(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom)))]
        #[allow(dead_code)]
        static OFFSET: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(0);

        /// `addr()` without the descriptor's call, or `None` until `learn` has found the
        /// variable in the static TLS block (and for good where it is not): one load and one
        /// add, and no stack frame for a fast path that must keep none.
        #[cfg(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom)))]
        #[inline(always)]
        #[allow(dead_code)]
        pub(crate) fn static_addr() -> Option<*mut $ty> {
            let off = OFFSET.load(core::sync::atomic::Ordering::Relaxed);
            if off == 0 {
                return None;
            }
            Some($crate::tls::thread_id().wrapping_add_signed(off) as *mut $ty)
        }

        /// Call the descriptor once and keep the variable's offset for `static_addr` if the
        /// descriptor says it lies in the static block (`tls::offset_is_static`); a no-op once
        /// some thread has found it there.
        #[cfg(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom)))]
        #[cold]
        #[allow(dead_code)]
        pub(crate) fn learn() {
            // Static once found, for every thread to come: nothing more to learn.
            if OFFSET.load(core::sync::atomic::Ordering::Relaxed) != 0 {
                return;
            }
            let (off, desc): (usize, usize);
            // SAFETY: the TLS descriptor sequence of `addr`, keeping the descriptor's address;
            // nothing is written.
            unsafe {
                core::arch::asm!(
                    concat!("lea rax, [rip + tensorpool_tls_", stringify!($name), "@TLSDESC]"),
                    "mov {desc}, rax",
                    concat!("call qword ptr [rax + tensorpool_tls_", stringify!($name), "@TLSCALL]"),
                    desc = out(reg) desc,
                    out("rax") off,
                    options(readonly),
                );
            }
            // Linked into an executable, the sequence is relaxed to the offset itself (the
            // call becomes a no-op), and the TLS is static.
            let arg = if desc == off {
                off
            } else {
                // SAFETY: `desc` is the descriptor's address (a GOT entry of this object, two
                // words), its argument word filled in by the time the resolver returned.
                unsafe { ((desc + 8) as *const usize).read_volatile() }
            };
            if $crate::tls::offset_is_static(off, arg) {
                OFFSET.store(off as isize, core::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    // Elsewhere: a plain `thread_local!` starting at `$init`.
    (@fallback $ty:ty, $init:expr) => {
        #[cfg(not(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom))))]
        std::thread_local! {
            static V: core::cell::UnsafeCell<$ty> = const { core::cell::UnsafeCell::new($init) };
        }
        /// The calling thread's value (its address is constant for the thread's life).
        #[cfg(not(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom))))]
        #[inline(always)]
        pub(crate) fn addr() -> *mut $ty {
            V.with(|v| v.get())
        }

        /// `addr()`: a plain thread-local is as cheap as it gets.
        #[cfg(not(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom))))]
        #[inline(always)]
        #[allow(dead_code)]
        pub(crate) fn static_addr() -> Option<*mut $ty> {
            Some(addr())
        }

        /// Nothing to learn.
        #[cfg(not(all(feature = "tls-desc", target_arch = "x86_64", target_os = "linux", not(loom))))]
        #[allow(dead_code)]
        pub(crate) fn learn() {}
    };
}

pub(crate) use fast_thread_local;

/// Whether a TLS descriptor whose resolver returned `off` (the variable's distance from the
/// thread pointer) with `arg` as its argument word stands for the static TLS block, where `off`
/// is the same in every thread, past and future. The C libraries' static resolvers (glibc's
/// `_dl_tlsdesc_return`, musl's `__tlsdesc_static`) return their argument, and on x86-64 the
/// static block lies below the thread pointer, so `off` is negative; a dynamic resolver's
/// argument is a pointer, a positive word in user space, so it never equals a negative `off`.
/// A library loaded with the program (preloaded or linked) is always in the static block.
#[cfg(all(
    feature = "tls-desc",
    target_arch = "x86_64",
    target_os = "linux",
    not(loom)
))]
pub(crate) fn offset_is_static(off: usize, arg: usize) -> bool {
    arg == off && (off as isize) < 0
}

/// A word that identifies the calling thread among the live ones, never 0, read without a call:
/// the free path compares it with the owner of a block's heap (`Heap::thread`) instead of
/// reaching its own heap through a thread-local. On x86-64 and AArch64 Linux it is the thread
/// pointer (the TCB's address, `fs:0` / `tpidr_el0`): one instruction, where the thread-local
/// of a shared library costs a descriptor call and a stack frame around it. Another thread may
/// get the same word once this one has exited (the C library reuses thread control blocks), so a
/// holder of the word clears it when its thread leaves (see `heap::registry`).
#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(loom)
))]
#[inline(always)]
pub(crate) fn thread_id() -> usize {
    let t: usize;
    // SAFETY: the C library sets the thread pointer for every thread before it runs any code,
    // to a block that stays the thread's while it lives; on x86-64 `fs` is that block, whose
    // first word points at itself (the TLS ABI's `tcbhead_t::tcb`). Reading writes nothing.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!(
            "mov {}, qword ptr fs:[0]",
            out(reg) t,
            options(pure, readonly, nostack, preserves_flags),
        );
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!(
            "mrs {}, tpidr_el0",
            out(reg) t,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    t
}

/// `thread_id` elsewhere: the address of a thread-local byte, unique among live threads. (Loom
/// models build it too but never call it: they name each heap's owner.)
#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(loom)
)))]
#[inline(always)]
pub(crate) fn thread_id() -> usize {
    std::thread_local! {
        static ID: u8 = const { 0 };
    }
    ID.with(|b| b as *const u8 as usize)
}

#[cfg(all(
    test,
    feature = "tls-desc",
    target_arch = "x86_64",
    target_os = "linux",
    not(loom)
))]
mod tests {
    fast_thread_local! {
        mod probe: [u64; 4] = zeroed;
    }

    #[test]
    fn a_static_offset_is_negative_and_the_descriptors_own_argument() {
        let off = (-4096isize) as usize;
        assert!(super::offset_is_static(off, off));
        // A dynamic descriptor's argument is a pointer, never the offset it returns.
        assert!(!super::offset_is_static(off, 0x7f00_1234_5000));
        // A positive distance is no static block's (on x86-64 it lies below the thread pointer).
        assert!(!super::offset_is_static(4096, 4096));
    }

    /// In this test executable the linker relaxes the descriptor to the offset itself, which
    /// `learn` must take as static; the preload library's tests cover the shared object, where
    /// the descriptor is read (and `dlopen`, where it stays dynamic).
    #[test]
    fn once_learned_the_static_address_is_each_threads_own() {
        probe::learn();
        let here = probe::static_addr().expect("an executable's TLS is static");
        assert_eq!(here, probe::addr());
        // SAFETY: the calling thread's own variable.
        unsafe { (*here)[1] = 7 };
        let there = std::thread::spawn(|| {
            let a = probe::static_addr().unwrap();
            assert_eq!(a, probe::addr());
            // SAFETY: as above; a new thread's starts zeroed.
            unsafe { ((*a)[1], a as usize) }
        })
        .join()
        .unwrap();
        assert_eq!(there.0, 0);
        assert_ne!(there.1, here as usize);
        // SAFETY: as above.
        assert_eq!(unsafe { (*here)[1] }, 7);
    }
}
