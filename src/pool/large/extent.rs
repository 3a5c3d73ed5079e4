//! The extent descriptor: one per contiguous run of pages in the arena, live or free, kept out of
//! band (see `meta`).
//!
//! Per region (a contiguous mapped range), the extents tile it exactly, linked in address order
//! through `prev`/`next`: `e.next.base == e.base + e.size` and the first extent starts at the
//! region's base. Free extents are dirty or clean, and no two neighbours are free in the same
//! state (they would have been coalesced); a maximal sequence of free neighbours is a *run*,
//! whose first extent is in the arena's tree with the run's length in `span`. Dirty extents are
//! on the release-order list. A `Busy` extent is being purged or unmapped outside the lock and
//! takes part in nothing until it comes back.

use crate::sync::plain::{AtomicU8, AtomicUsize};
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

/// What an extent is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// A descriptor on the spare list, describing nothing.
    Unused = 0,
    /// Free, its pages possibly resident ("dirty"): reused first, purged by decay.
    Dirty = 1,
    /// Free and not resident (never touched, or purged).
    Clean = 2,
    /// Off every tree and list while the lock is dropped to purge or unmap it.
    Busy = 3,
    /// A large block handed out.
    Live = 4,
    /// A large block freed into its thread's hot cache (still counted live; a second free is
    /// a double free).
    Hot = 5,
    /// A small-block segment held by a thread heap.
    Segment = 6,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::Dirty,
            2 => State::Clean,
            3 => State::Busy,
            4 => State::Live,
            5 => State::Hot,
            6 => State::Segment,
            _ => State::Unused,
        }
    }

    /// Whether an extent in this state is free (in a tree).
    pub(crate) fn is_free(self) -> bool {
        matches!(self, State::Dirty | State::Clean)
    }
}

/// One extent. Three cache lines; the fields `free` reads without the lock come first.
#[repr(C, align(64))]
pub(crate) struct Extent {
    /// The block's first byte while `Live` or `Hot`, else 0. Read without the lock by `free` to
    /// confirm an address (see `pagemap`).
    pub(crate) start: AtomicUsize,
    /// `State as u8`; read without the lock by the same check.
    pub(crate) state: AtomicU8,
    /// Live: the block's kind.
    pub(crate) kind: u8,
    /// Whether every byte is known zero (fresh or purged with `MADV_DONTNEED`).
    pub(crate) zero: bool,
    /// The arena zone the extent's region belongs to.
    pub(crate) zone: u8,
    /// Live: the block is sampled by the profiler (`profile`), so its free drops the record.
    pub(crate) sampled: bool,
    /// Live: the scope the block was allocated in (`scope`; 0: none), whose bytes its free
    /// subtracts.
    pub(crate) scope: u16,
    /// Tree priority (a hash of `base`, fixed while the extent is in a tree).
    pub(crate) prio: u32,
    /// First byte (page-aligned).
    pub(crate) base: usize,
    /// Bytes (a page multiple).
    pub(crate) size: usize,
    /// Address neighbours within the region (null at its ends).
    pub(crate) prev: *mut Extent,
    pub(crate) next: *mut Extent,
    /// The first extent of a free run: the run's length (what the tree indexes); 0 for every
    /// other extent.
    pub(crate) span: usize,
    /// Tree links (first extents of runs), and the largest `span` in this extent's subtree.
    pub(crate) left: *mut Extent,
    pub(crate) right: *mut Extent,
    pub(crate) parent: *mut Extent,
    pub(crate) max: usize,
    /// Release-order list of the attribution (dirty), or the chain of a batch being purged.
    pub(crate) lru_prev: *mut Extent,
    pub(crate) lru_next: *mut Extent,
    /// Release clock at the last free into this extent (orders the release-order list).
    pub(crate) released: u64,
    /// Dirty: how many of its bytes each kind (and `SLAB`, returned segments) released; they sum
    /// to `size`. Coalescing adds them; a request takes its own kind's share first.
    pub(crate) shares: [u64; ATTRS],
    /// Live: the thread heap that took the block (opaque here; 0: none), to which a free by
    /// another thread sends it back (`heap::returns`).
    pub(crate) owner: usize,
    /// Hot, on its way back to `owner`: the next block of that heap's return list.
    pub(crate) returned_next: *mut Extent,
}

/// Which shares a split takes first (see `Extent::take_shares`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Prefer {
    /// This attribution's share first: a request taking its own kind's memory.
    Own(usize),
    /// Every other share first: what is left keeps this attribution's.
    Others(usize),
}

/// Attributions of dirty memory: the kinds, and returned slab segments.
pub(crate) const ATTRS: usize = crate::kind::NUM_KINDS + 1;

const _: () = assert!(core::mem::size_of::<Extent>() == 192);

impl Extent {
    /// An unused descriptor (a template: every use is a fresh copy).
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const EMPTY: Extent = Extent {
        start: AtomicUsize::new(0),
        state: AtomicU8::new(State::Unused as u8),
        kind: 0,
        zero: false,
        zone: 0,
        sampled: false,
        scope: 0,
        prio: 0,
        base: 0,
        size: 0,
        span: 0,
        prev: ptr::null_mut(),
        next: ptr::null_mut(),
        left: ptr::null_mut(),
        right: ptr::null_mut(),
        parent: ptr::null_mut(),
        max: 0,
        lru_prev: ptr::null_mut(),
        lru_next: ptr::null_mut(),
        released: 0,
        shares: [0; ATTRS],
        owner: 0,
        returned_next: ptr::null_mut(),
    };

    /// One past the last byte.
    #[inline]
    pub(crate) fn end(&self) -> usize {
        self.base + self.size
    }

    #[inline]
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    /// Set the state (under the lock, or by the thread holding a live block).
    #[inline]
    pub(crate) fn set_state(&mut self, s: State) {
        self.state.store(s as u8, Relaxed);
    }

    /// Remove `bytes` from the shares and return what was removed (its composition): `kind`'s
    /// share first and then the others in index order, or with `Prefer::Others(kind)` the
    /// others first and `kind`'s last.
    pub(crate) fn take_shares(&mut self, bytes: u64, order: Prefer) -> [u64; ATTRS] {
        let mut out = [0; ATTRS];
        let mut left = bytes;
        let (k, own_first) = match order {
            Prefer::Own(k) => (k, true),
            Prefer::Others(k) => (k, false),
        };
        let others = (0..ATTRS).filter(move |&a| a != k);
        let seq: [usize; ATTRS] = if own_first {
            let mut s = [k; ATTRS];
            for (i, a) in others.enumerate() {
                s[i + 1] = a;
            }
            s
        } else {
            let mut s = [k; ATTRS];
            for (i, a) in others.enumerate() {
                s[i] = a;
            }
            s
        };
        for a in seq {
            let t = left.min(self.shares[a]);
            self.shares[a] -= t;
            out[a] = t;
            left -= t;
        }
        debug_assert_eq!(left, 0, "shares do not cover the bytes taken");
        out
    }

    /// The tree priority for an extent at `base`: a multiplicative hash, so that address
    /// order does not make the treap degenerate, and deterministic, so that layouts repeat from
    /// run to run.
    pub(crate) fn prio_for(base: usize) -> u32 {
        ((base >> 12) as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29) as u32
    }
}
