//! Every thread heap, and the lifecycle around them: a thread gets a heap at its first
//! allocation (adopting an abandoned one or mapping a new one), leaves it at exit (seen by a
//! `pthread` key destructor, never a Rust TLS destructor, which could allocate), and the exit
//! key's lock is held across `fork` by this module's own handler.

use super::pages;
use super::remote;
use super::returns::Returns;
use super::tag;
use super::types::{cur, empty_kind_heap, empty_page, Heap};
use crate::class::NUM_SMALL;
use crate::kind::NUM_KINDS;
use crate::os;
use crate::sync::{shared_static, AtomicBool, AtomicPtr, AtomicUsize, Ordering, SpinLock};
use core::ptr;
use crossbeam_utils::CachePadded;

/// Every heap ever created: a push-only list. Heaps are never freed, so a pointer read from it
/// stays valid; a heap whose thread exited is adopted by the next new thread, live blocks, pending
/// remote frees and all.
pub(crate) struct Registry {
    pub(crate) head: AtomicPtr<Heap>,
}

impl Registry {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Adopt an abandoned heap, or map and register a new one. Null when the OS refuses memory.
    pub(crate) fn acquire(&self) -> *mut Heap {
        let mut h = self.head.load(Ordering::Acquire);
        while !h.is_null() {
            if try_adopt(h) {
                // SAFETY: heaps on the registry are never freed; the list is atomic.
                unsafe { (*h).returns.open() };
                return h;
            }
            // SAFETY: heaps on the registry are never freed; `next_heap` was set before
            // publication and never changes.
            h = unsafe { (*h).next_heap };
        }
        let h = os::map(heap_bytes()).cast::<Heap>();
        if h.is_null() {
            return h;
        }
        // SAFETY: a fresh, zeroed mapping large enough for a heap; zero is a valid starting state
        // for every plain field. The direct pages, back pointers and atomics are written here,
        // before publication (atomics with `write`: loom's are not valid as zero bytes).
        unsafe {
            for k in 0..NUM_KINDS {
                let kh = ptr::addr_of_mut!((*h).kinds[k]);
                (*kh).direct = [empty_page(); NUM_SMALL];
                (*kh).heap = h;
                (*kh).kind = k as u8;
            }
            (*h).slow.direct = [empty_page(); NUM_SMALL];
            (*h).slow.heap = h;
            ptr::addr_of_mut!((*h).thread).write(CachePadded::new(AtomicUsize::new(0)));
            ptr::addr_of_mut!((*h).delayed)
                .write(CachePadded::new(AtomicPtr::new(ptr::null_mut())));
            ptr::addr_of_mut!((*h).in_use).write(AtomicBool::new(true));
            ptr::addr_of_mut!((*h).returns).write(CachePadded::new(Returns::new()));
            #[cfg(loom)]
            ptr::addr_of_mut!((*h).hot).write(super::hot::ThreadCache::new());
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                (*h).next_heap = head;
                match self
                    .head
                    .compare_exchange_weak(head, h, Ordering::Release, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => head = actual,
                }
            }
        }
        h
    }

    /// Run `f` on every heap, in use or not (statistics). `f` may read only what other threads
    /// may read while the owner runs (atomics).
    pub(crate) fn for_each(&self, mut f: impl FnMut(*mut Heap)) {
        let mut h = self.head.load(Ordering::Acquire);
        while !h.is_null() {
            f(h);
            // SAFETY: as in `acquire`.
            h = unsafe { ptr::addr_of!((*h).next_heap).read() };
        }
    }
}

/// Bytes mapped for one heap.
pub(crate) fn heap_bytes() -> usize {
    core::mem::size_of::<Heap>().div_ceil(os::PAGE) * os::PAGE
}

/// Take ownership of `h` if no thread owns it.
fn try_adopt(h: *mut Heap) -> bool {
    // SAFETY: heaps on the registry are never freed; `in_use` is atomic.
    let in_use = unsafe { &(*h).in_use };
    // The Acquire on success pairs with the Release in `abandon`: the previous owner's writes to
    // the heap happen before ours.
    !in_use.load(Ordering::Relaxed)
        && in_use
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
}

shared_static! {
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    pub(crate) static HEAPS: Registry = Registry::new();
}

shared_static! {
    /// The thread-exit key (0 until created; `usize::MAX` if none could be created).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);
}
shared_static! {
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static EXIT_KEY_LOCK: SpinLock<()> = SpinLock::new(());
}
shared_static! {
    /// Whether this module's fork handler is registered.
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static FORK_HANDLER: AtomicBool = AtomicBool::new(false);
}

/// Give the calling thread a heap: adopt an abandoned one or map a new one. Returns null when the
/// OS refuses memory.
///
/// # Safety
/// The calling thread has no heap (its current kind heap, `cur`, is the static empty one).
#[cold]
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn init_thread() -> *mut Heap {
    if !FORK_HANDLER.load(Ordering::Acquire) && !FORK_HANDLER.swap(true, Ordering::AcqRel) {
        os::at_fork(fork_prepare, fork_release, fork_child);
    }
    let heap = HEAPS.acquire();
    if heap.is_null() {
        return heap;
    }
    claim_thread_id(heap);
    super::types::cur::learn();
    let key = exit_key();
    if key != usize::MAX {
        os::thread_key_set(key as u32, heap.cast());
    }
    // SAFETY: the heap is ours now; the tag is below `NUM_KINDS`.
    unsafe { super::tag::point_at(heap, tag::current(), super::slow_only()) };
    heap
}

/// Make `heap` the one whose blocks the calling thread frees as their owner. A heap may still
/// carry this thread's id from a thread that exited with it (the C library reuses thread control
/// blocks, and a heap whose thread left it in use, which only a thread-exit destructor giving up
/// can do, is never adopted): such a heap goes back to having no owner thread, so that its
/// blocks are freed as other threads' are.
fn claim_thread_id(heap: *mut Heap) {
    let me = crate::tls::thread_id();
    HEAPS.for_each(|h| {
        // SAFETY: heaps on the registry are never freed; `thread` is atomic. Only a heap holding
        // this thread's id is written, and no live thread but this one holds it.
        let t = unsafe { &(*h).thread };
        if h != heap && t.load(Ordering::Relaxed) == me {
            t.store(0, Ordering::Relaxed);
        }
    });
    // SAFETY: as above; the heap is ours now.
    unsafe { (*heap).thread.store(me, Ordering::Relaxed) };
}

fn exit_key() -> usize {
    let mut k = EXIT_KEY.load(Ordering::Acquire);
    if k == 0 {
        k = EXIT_KEY_LOCK.with(|_| {
            let k = EXIT_KEY.load(Ordering::Acquire);
            if k != 0 {
                return k;
            }
            // Key 0 is a valid pthread key; store keys shifted by one so 0 means "not yet".
            let k = match os::thread_key_create(on_thread_exit) {
                Some(k) => k as usize + 1,
                None => usize::MAX,
            };
            EXIT_KEY.store(k, Ordering::Release);
            k
        });
    }
    if k == usize::MAX {
        k
    } else {
        k - 1
    }
}

/// Thread-exit destructor: publish the thread's batch of remote frees, then abandon its heap.
#[link_section = ".text.hot.tensorpool"]
unsafe extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    remote::flush_here();
    crate::pystack::thread_exit();
    cur::set(empty_kind_heap());
    // SAFETY: the heap was this thread's; from now on this thread allocates through a new heap
    // (acquired again if a later destructor allocates), so nothing else touches this one.
    unsafe { abandon(arg.cast::<Heap>()) }
}

/// Leave a heap for another thread to adopt: send its cache of large blocks back, and those on
/// their way back to it (closing its return list), take back its remote frees, give its empty pages and spare segment back, then mark it free. Other threads
/// may go on freeing its blocks meanwhile; those frees wait on its pages for the adopter.
///
/// # Safety
/// The calling thread owns `heap` and touches it no more after this call.
pub(crate) unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: owner-only access until the final store hands the heap over.
    unsafe {
        // From here the blocks of this heap that this thread frees go back as another
        // thread's would: a later thread with the same id must not find it here.
        (*heap).thread.store(0, Ordering::Relaxed);
        // A reclaimer inside the cache is sending it back already.
        (*heap).hot.try_with(|c, counters| c.flush(counters));
        super::free_chain((*heap).returns.close());
        for k in 0..NUM_KINDS {
            let kh = ptr::addr_of_mut!((*heap).kinds[k]);
            for class in 0..NUM_SMALL {
                pages::set_direct(kh, class, empty_page());
            }
        }
        pages::collect_all(heap);
        pages::release_spare(heap);
        // Release: everything above happens before the adopter's Acquire in `try_adopt`.
        (*heap).in_use.store(false, Ordering::Release);
    }
}

/// Take back the remote frees waiting on abandoned heaps and give their empty pages back, so
/// that statistics count those blocks as freed and `trim` can return their segments. Each heap
/// is adopted for the moment it takes, then left again.
pub(crate) fn collect_abandoned() {
    HEAPS.for_each(|h| {
        if try_adopt(h) {
            // SAFETY: adopted: ours until the store below, which hands it back (Release, as in
            // `abandon`).
            unsafe {
                pages::collect_all(h);
                (*h).in_use.store(false, Ordering::Release);
            }
        }
    });
}

/// Fork preparation: hold the exit key's lock and the scope table's, so the child never
/// inherits them held by a thread that does not exist there.
unsafe extern "C" fn fork_prepare() {
    EXIT_KEY_LOCK.raw_lock();
    crate::scope::hold_across_fork();
}

/// After `fork`, in the parent.
unsafe extern "C" fn fork_release() {
    crate::scope::release_after_fork();
    EXIT_KEY_LOCK.raw_unlock();
}

/// After `fork`, in the child: as in the parent, a configuration left half applied by another
/// thread is applied again, and the thread caches' shared total counts only this thread's
/// claim (the threads that held the others do not exist here).
unsafe extern "C" fn fork_child() {
    crate::options::after_fork_in_child();
    crate::scope::release_after_fork();
    EXIT_KEY_LOCK.raw_unlock();
    let heap = super::types::current_heap();
    if !heap.is_null() {
        // SAFETY: the calling thread's own heap, the only live one in the child.
        unsafe { super::hot::after_fork_in_child(&*ptr::addr_of!((*heap).hot)) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_heap_left_holding_a_threads_id_loses_it_when_that_thread_takes_a_heap() {
        let me = crate::tls::thread_id();
        assert_ne!(me, 0);
        // A heap left in use with this thread's id, as one whose thread's exit destructor gave
        // up would be when the C library hands that thread's control block to this one.
        let stale = HEAPS.acquire();
        let fresh = HEAPS.acquire();
        assert!(!stale.is_null() && !fresh.is_null() && stale != fresh);
        // SAFETY: both heaps are this test's (acquired above) until abandoned below.
        unsafe {
            (*stale).thread.store(me, Ordering::Relaxed);
            claim_thread_id(fresh);
            assert_eq!((*stale).thread.load(Ordering::Relaxed), 0);
            assert_eq!((*fresh).thread.load(Ordering::Relaxed), me);
            abandon(fresh);
            assert_eq!((*fresh).thread.load(Ordering::Relaxed), 0);
            abandon(stale);
        }
    }

    #[test]
    fn thread_ids_differ_between_live_threads() {
        let me = crate::tls::thread_id();
        assert_eq!(me, crate::tls::thread_id());
        let other = std::thread::spawn(crate::tls::thread_id).join().unwrap();
        assert_ne!(other, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(crate::tls::thread_id()).unwrap();
            done_rx.recv().unwrap();
        });
        let live = rx.recv().unwrap();
        assert_ne!(live, me);
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
