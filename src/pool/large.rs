//! Large blocks (above the small classes): one mapping each, cached per tensor kind when freed.
//!
//! Each block's mapping starts with a `LargeHeader` at a `SEGMENT_SIZE`-aligned address, so the
//! block's owner is found from its address exactly as for small blocks
//! (`(ptr - 1) & !(SEGMENT_SIZE - 1)`). The block starts at `offset` bytes into the mapping:
//! the header size rounded up to the alignment, or exactly one segment for alignments of a
//! segment or more (then the header sits one segment below the block and the virtual range in
//! between is mapped but never touched).
//!
//! Freed blocks stay mapped in their kind's pool: a free list per class (most recently released
//! first) for reuse, and one list over all classes in order of release for eviction. While a
//! kind's `live + cached` bytes exceed its capacity, the least recently released cached blocks go
//! back to the OS. Per kind: `live_bytes + cached_bytes == mapped_bytes`.
//!
//! A request whose class has nothing cached recycles: it reserves its range and moves into it
//! (with `mremap`, no copy, no fault) the pages of the least recently released cached blocks of
//! any kind, preferring one whose tail covers the request from a single mapping. A victim bigger
//! than what is missing gives its tail and stays cached with what is left. Only a block's `used`
//! prefix (pages some request may have touched) is moved; its untouched rest is unmapped. So the
//! process's resident memory follows its live peak rather than live + cached. Each block records
//! the mappings it spans (at most `MAX_PIECES`), because `mremap` before Linux 6.17 moves a range
//! only within one mapping and because the process's mapping count is limited.

use super::slab::SEGMENT_SIZE;
use crate::class::{large_index, large_size, NUM_LARGE};
use crate::os;
use crate::sync::{shared_static, AtomicUsize, Ordering, SpinLock};
use core::ptr;

/// First word of a large block's header.
pub(crate) const LARGE_TAG: usize = 0x7e45_0a11_5e60_0002;

/// Header size: four cache lines (one of fields, three of the piece table), so blocks stay
/// 64-aligned; at most 1.6 % of the smallest large block.
const HEADER: usize = 640;

/// A block spans at most this many mappings (VMAs): recycling moves pages of several blocks into
/// one and each piece stays its own mapping. A victim that would take a block over it is released
/// to the OS instead, so the process's mapping count (limited by `vm.max_map_count`) stays a
/// bounded multiple of its block count.
const MAX_PIECES: usize = 142;

#[repr(C, align(64))]
pub(crate) struct LargeHeader {
    /// `LARGE_TAG`.
    tag: usize,
    /// Bytes mapped from the header on.
    map_len: usize,
    /// Usable bytes (a class size, or what is left after recycling took a tail).
    size: usize,
    /// Links in the kind's release-order list (`prev` towards the most recent).
    lru_prev: *mut LargeHeader,
    lru_next: *mut LargeHeader,
    /// Links in the class free list.
    class_next: *mut LargeHeader,
    /// Release clock at the last free (orders cached blocks across kinds for recycling).
    released: usize,
    /// Block start minus header address (at most `SEGMENT_SIZE`).
    offset: u32,
    /// Tensor kind index, whether the memory is known zero.
    kind: u8,
    fresh: bool,
    /// Pages from the header on that any use of the block may have touched (so may be
    /// resident); the pages after them were never handed out below a request's end.
    used_pages: u32,
    /// The mappings the block spans, in address order.
    pieces: Pieces,
}

/// Where a block's mappings end, in pages from the header, in address order. Kernels before 6.17
/// move a range with one `mremap` only within one mapping, so recycling moves piece by piece.
/// An empty table means "unknown" (a block too large to record in pages of 32 bits): such a
/// block is released, never recycled.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pieces {
    n: u8,
    ends: [u32; MAX_PIECES],
}

impl Pieces {
    const NONE: Pieces = Pieces {
        n: 0,
        ends: [0; MAX_PIECES],
    };

    /// One mapping of `len` bytes.
    fn whole(len: usize) -> Pieces {
        let mut p = Pieces::NONE;
        p.push(len);
        p
    }

    /// Append a piece ending at byte `end`; on overflow the table becomes unknown.
    fn push(&mut self, end: usize) {
        match u32::try_from(end / os::PAGE) {
            Ok(pages) if (self.n as usize) < MAX_PIECES => {
                self.ends[self.n as usize] = pages;
                self.n += 1;
            }
            _ => *self = Pieces::NONE,
        }
    }

    /// Byte ranges of the pieces.
    fn ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ends = &self.ends[..self.n as usize];
        ends.iter().enumerate().map(move |(i, &e)| {
            let start = if i == 0 { 0 } else { ends[i - 1] as usize };
            (start * os::PAGE, e as usize * os::PAGE)
        })
    }

    /// Pieces overlapping `[cut, ..)`.
    fn count_from(&self, cut: usize) -> usize {
        self.ranges().filter(|&(_, e)| e > cut).count()
    }

    /// Drop everything from byte `cut` on.
    fn truncate(&mut self, cut: usize) {
        let keep = self.ranges().filter(|&(st, _)| st < cut).count();
        self.n = keep as u8;
        if keep > 0 {
            self.ends[keep - 1] = (cut / os::PAGE) as u32;
        }
    }
}

const _: () = assert!(core::mem::size_of::<LargeHeader>() == HEADER);

/// Counters of one kind's large-block pool (exact: updated under the kind's lock).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LargeCounters {
    /// Allocation requests served by the large path.
    pub requests: u64,
    /// Requests served from a cached block (no OS call).
    pub hits: u64,
    /// Requests that mapped fresh memory.
    pub misses: u64,
    /// Bytes in blocks handed out and not freed (class sizes).
    pub live_bytes: u64,
    /// Bytes in freed blocks kept mapped for reuse.
    pub cached_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Bytes asked for (before rounding to classes).
    pub requested_bytes: u64,
    /// Bytes handed out for them (class sizes): `granted - requested` is rounding overhead.
    pub granted_bytes: u64,
    /// Cached blocks released to the OS (capacity or `trim`).
    pub evictions: u64,
    /// Bytes of those blocks.
    pub evicted_bytes: u64,
    /// Fresh mappings made.
    pub os_maps: u64,
    /// Mappings released.
    pub os_unmaps: u64,
    /// Allocations that left live bytes above the soft capacity.
    pub over_capacity: u64,
    /// Requests served wholly by pages moved from other cached blocks (of any class or kind)
    /// instead of fresh memory: no page fault, one `mremap` per piece.
    pub recycled: u64,
    /// Bytes moved into this kind's blocks that way.
    pub recycled_bytes: u64,
    /// Bytes of this kind's cached blocks moved out to serve other requests.
    pub donated_bytes: u64,
}

/// One kind's pool of cached large blocks.
pub(crate) struct KindPool {
    /// Class free lists, most recently released first (a singly linked stack per class with
    /// lazy removal is not enough: eviction unlinks from the middle, so lists are scanned).
    class_head: [*mut LargeHeader; NUM_LARGE],
    /// Release-order list: `lru_head` most recent, `lru_tail` least recent.
    lru_head: *mut LargeHeader,
    lru_tail: *mut LargeHeader,
    /// Soft capacity on live + cached bytes.
    pub(crate) capacity: usize,
    pub(crate) counters: LargeCounters,
}

// SAFETY: the raw pointers are headers of mappings owned by the pool; the pool is only touched
// under its lock.
unsafe impl Send for KindPool {}

impl KindPool {
    pub(crate) const fn new(capacity: usize) -> Self {
        Self {
            class_head: [ptr::null_mut(); NUM_LARGE],
            lru_head: ptr::null_mut(),
            lru_tail: ptr::null_mut(),
            capacity,
            counters: LargeCounters {
                requests: 0,
                hits: 0,
                misses: 0,
                live_bytes: 0,
                cached_bytes: 0,
                peak_live_bytes: 0,
                requested_bytes: 0,
                granted_bytes: 0,
                evictions: 0,
                evicted_bytes: 0,
                os_maps: 0,
                os_unmaps: 0,
                over_capacity: 0,
                recycled: 0,
                recycled_bytes: 0,
                donated_bytes: 0,
            },
        }
    }

    /// Take a cached block of at least `class_bytes` (its own class first, then up to four larger
    /// classes, at most twice the size: blocks that grew by `realloc` serve the next request's
    /// smaller start) whose block start is `align`-aligned.
    unsafe fn take(&mut self, class_bytes: usize, align: usize) -> *mut LargeHeader {
        let first = large_index(class_bytes);
        for idx in first..(first + 5).min(NUM_LARGE) {
            let mut h = self.class_head[idx];
            // SAFETY: every header on the lists is a cached block owned by this pool.
            unsafe {
                while !h.is_null() {
                    if (h as usize + (*h).offset as usize) % align == 0 {
                        self.unlink(h);
                        return h;
                    }
                    h = (*h).class_next;
                }
            }
        }
        ptr::null_mut()
    }

    unsafe fn lru_unlink(&mut self, h: *mut LargeHeader) {
        // SAFETY: `h` is on the release-order list.
        unsafe {
            let (p, n) = ((*h).lru_prev, (*h).lru_next);
            if p.is_null() {
                self.lru_head = n;
            } else {
                (*p).lru_next = n;
            }
            if n.is_null() {
                self.lru_tail = p;
            } else {
                (*n).lru_prev = p;
            }
        }
    }

    /// Cache a freed block as the most recently released.
    unsafe fn put(&mut self, h: *mut LargeHeader) {
        // SAFETY: `h` is a live block of this kind being freed; it joins both lists.
        unsafe { self.link_after(h, ptr::null_mut()) }
    }

    /// Return what recycling left of a victim to where its release clock puts it: usually the
    /// tail (victims are the least recently released), but a victim chosen because its tail fit
    /// the request may be younger than others, and LRU order must stay release order.
    unsafe fn put_back(&mut self, h: *mut LargeHeader) {
        // SAFETY: `h` is a cached block of this kind off every list; list members are ours.
        unsafe {
            let mut after = self.lru_tail;
            while !after.is_null() && (*after).released < (*h).released {
                after = (*after).lru_prev;
            }
            self.link_after(h, after);
        }
    }

    /// Link `h` into the release-order list just after `after` (towards the tail), or at the
    /// head when `after` is null, and onto its class list.
    ///
    /// # Safety
    /// `h` is a block of this kind off every list; `after` is null or on the list.
    unsafe fn link_after(&mut self, h: *mut LargeHeader, after: *mut LargeHeader) {
        // SAFETY: the caller's contract; list members are ours under the lock.
        unsafe {
            let next = if after.is_null() {
                self.lru_head
            } else {
                (*after).lru_next
            };
            (*h).lru_prev = after;
            (*h).lru_next = next;
            if after.is_null() {
                self.lru_head = h;
            } else {
                (*after).lru_next = h;
            }
            if next.is_null() {
                self.lru_tail = h;
            } else {
                (*next).lru_prev = h;
            }
            self.put_in_class(h);
        }
    }

    /// Push onto the class list of the largest class the block can serve.
    unsafe fn put_in_class(&mut self, h: *mut LargeHeader) {
        // SAFETY: `h` is linked on the release-order list by the caller and ours.
        unsafe {
            let idx = large_index((*h).size);
            (*h).class_next = self.class_head[idx];
            self.class_head[idx] = h;
            (*h).fresh = false;
            self.counters.cached_bytes = self.counters.cached_bytes.wrapping_add((*h).size as u64);
        }
    }

    /// The recycling victim for a request missing `want` bytes: the least recently released
    /// cached block whose resident tail can give them from one mapping (so the new block gains a
    /// single piece), else the least recently released. Blocks whose tail would bring more than
    /// `max_adds` pieces are passed over (they still serve hits of their class). Looks at the
    /// oldest `VICTIM_SCAN` blocks. Returns the victim's release clock, whether it fits, and
    /// the block.
    fn victim(&self, want: usize, max_adds: usize) -> Option<(usize, bool, *mut LargeHeader)> {
        let mut oldest = None;
        let mut h = self.lru_tail;
        let mut n = 0;
        // SAFETY: list members are cached blocks owned by this pool, read under its lock.
        unsafe {
            while !h.is_null() && n < VICTIM_SCAN {
                let pieces = &(*h).pieces;
                let used = ((*h).used_pages as usize * os::PAGE).min((*h).map_len);
                let cut = used - used.min(want);
                let adds = pieces.count_from(cut);
                if pieces.n > 0 && adds <= max_adds {
                    if adds == 1 && used - cut == want {
                        return Some(((*h).released, true, h));
                    }
                    if oldest.is_none() {
                        oldest = Some(((*h).released, false, h));
                    }
                }
                h = (*h).lru_prev;
                n += 1;
            }
        }
        oldest
    }

    /// Unlink the least recently released cached block, or null (no counting).
    unsafe fn unlink_lru(&mut self) -> *mut LargeHeader {
        let h = self.lru_tail;
        if !h.is_null() {
            // SAFETY: `h` is cached here.
            unsafe { self.unlink(h) };
        }
        h
    }

    /// Take cached block `h` off both lists (no counting).
    ///
    /// # Safety
    /// `h` is a cached block of this pool.
    unsafe fn unlink(&mut self, h: *mut LargeHeader) {
        // SAFETY: `h` is cached, so it is on its class list and the release-order list.
        unsafe {
            self.lru_unlink(h);
            let idx = large_index((*h).size);
            let mut pp: *mut *mut LargeHeader = &mut self.class_head[idx];
            while *pp != h {
                pp = &mut (**pp).class_next;
            }
            *pp = (*h).class_next;
            self.counters.cached_bytes = self.counters.cached_bytes.wrapping_sub((*h).size as u64);
        }
    }

    /// Unlink the least recently released cached block for release to the OS, or null.
    unsafe fn pop_lru(&mut self) -> *mut LargeHeader {
        // SAFETY: under the lock (the caller's).
        let h = unsafe { self.unlink_lru() };
        if !h.is_null() {
            // SAFETY: `h` is ours now.
            let size = unsafe { (*h).size } as u64;
            self.counters.evictions = self.counters.evictions.wrapping_add(1);
            self.counters.evicted_bytes = self.counters.evicted_bytes.wrapping_add(size);
            self.counters.os_unmaps = self.counters.os_unmaps.wrapping_add(1);
        }
        h
    }

    /// Evict least recently released blocks while over capacity; returns them as a chain through
    /// `lru_next` so the caller unmaps them after dropping the lock.
    unsafe fn evict_over_capacity(&mut self) -> *mut LargeHeader {
        let mut chain: *mut LargeHeader = ptr::null_mut();
        while self
            .counters
            .live_bytes
            .saturating_add(self.counters.cached_bytes)
            > self.capacity as u64
        {
            // SAFETY: pool access under the lock.
            let h = unsafe { self.pop_lru() };
            if h.is_null() {
                // Live bytes alone exceed the capacity: soft for the global allocator.
                break;
            }
            // SAFETY: `h` is now off every list and owned by us.
            unsafe { (*h).lru_next = chain };
            chain = h;
        }
        chain
    }

    /// Record this kind's bytes in the timeline, if it is on (under the kind's lock, so a kind's
    /// samples are in the order of its events).
    #[inline]
    fn sample(&self, kind: usize) {
        if crate::timeline::enabled() {
            crate::timeline::record(kind, self.counters.live_bytes, self.counters.cached_bytes);
        }
    }

    fn add_live(&mut self, bytes: usize) {
        let c = &mut self.counters;
        c.live_bytes = c.live_bytes.wrapping_add(bytes as u64);
        if c.live_bytes > c.peak_live_bytes {
            c.peak_live_bytes = c.live_bytes;
        }
        if c.live_bytes > self.capacity as u64 {
            c.over_capacity = c.over_capacity.wrapping_add(1);
        }
    }
}

/// Move `v[cut..vlen]` to `dst[filled..]`: in one `mremap` where the kernel can (one mapping, or
/// several from Linux 6.17 on), else mapping by mapping along `vp`'s table. Records the
/// pieces in `pieces` and returns the bytes moved (a prefix of the range).
///
/// # Safety
/// `v[cut..vlen]` is mapped and owned by the caller, with pieces `vp`; `dst[filled..filled +
/// vlen - cut]` is a reservation of the caller's.
unsafe fn move_pieces(
    v: *mut u8,
    vp: &Pieces,
    cut: usize,
    vlen: usize,
    dst: *mut u8,
    filled: usize,
    pieces: &mut Pieces,
) -> usize {
    let take = vlen - cut;
    // SAFETY: both ranges are the caller's (see above).
    let (src, to) = unsafe { (v.add(cut), dst.add(filled)) };
    if os::move_to(src, take, take, to) {
        for (_, en) in vp.ranges().filter(|&(_, e)| e > cut) {
            pieces.push(filled + en - cut);
        }
        return take;
    }
    let mut moved = 0;
    for (st, en) in vp.ranges() {
        let st = st.max(cut);
        if en <= st {
            continue;
        }
        // SAFETY: `[st, en)` is one mapping of `v`; its destination lies in the reservation.
        let (src, to) = unsafe { (v.add(st), dst.add(filled + moved)) };
        if !os::move_to(src, en - st, en - st, to) {
            break;
        }
        moved += en - st;
        pieces.push(filled + moved);
    }
    moved
}

/// Unmap every block of an eviction chain.
fn unmap_chain(mut h: *mut LargeHeader) {
    while !h.is_null() {
        // SAFETY: chain members are off all lists and owned by the caller.
        let (next, len) = unsafe { ((*h).lru_next, (*h).map_len) };
        os::unmap(h.cast(), len);
        h = next;
    }
}

/// Cache colours: block starts are spread over this many line offsets within the header's page.
/// Headers sit on segment (4 MiB) boundaries, so without colours every block would start at
/// the same offset modulo 4 MiB, and the same lines of all blocks (their starts, and each page's
/// line at that offset) would compete for one set of every cache level. (jemalloc's
/// `cache_oblivious` option randomises large-block starts for the same reason.)
const COLOURS: usize = (os::PAGE - HEADER) / 64;

/// Where the block starts relative to its (segment-aligned) header for an alignment and a colour:
/// the first multiple of `align` at or past `HEADER + colour` lines, or one segment for
/// alignments of a segment or more. Alignments of a page or more leave no room for colours.
fn block_offset(align: usize, colour: usize) -> usize {
    (HEADER + (colour % COLOURS) * 64)
        .next_multiple_of(align)
        .min(SEGMENT_SIZE)
}

/// Bytes to map for a block of `class_bytes` at `offset`: whole pages.
fn map_len_for(offset: usize, class_bytes: usize) -> Option<usize> {
    Some(offset.checked_add(class_bytes)?.checked_add(os::PAGE - 1)? & !(os::PAGE - 1))
}

/// Map a region of `len` bytes whose start is segment-aligned and whose start + `offset` is
/// `align`-aligned.
fn map_for(len: usize, offset: usize, align: usize) -> *mut u8 {
    if align <= SEGMENT_SIZE {
        return os::map_aligned(len, SEGMENT_SIZE);
    }
    let Some(total) = len.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = os::map(total);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let base = ((start + offset + align - 1) & !(align - 1)) - offset;
    let head = base - start;
    let tail = total - head - len;
    if head > 0 {
        os::unmap(raw, head);
    }
    if tail > 0 {
        os::unmap((base + len) as *mut u8, tail);
    }
    base as *mut u8
}

/// The large-block pools of all kinds.
pub(crate) struct LargePools {
    pub(crate) kinds: [SpinLock<KindPool>; crate::kind::NUM_KINDS],
    /// Advise huge pages on blocks of 2 MiB or more.
    pub(crate) huge_pages: crate::sync::AtomicBool,
    /// Release clock: ticks at every free, so cached blocks of all kinds can be ordered.
    clock: AtomicUsize,
    /// The next fresh block's cache colour (see `COLOURS`).
    colour: AtomicUsize,
}

shared_static! {
    /// The process-wide large-block pools.
    pub(crate) static LARGE: LargePools = LargePools::new(usize::MAX);
}

/// Bytes from which huge-page advice applies.
const HUGE_PAGE: usize = 2 << 20;

impl LargePools {
    #[cfg(not(loom))]
    pub(crate) const fn new(capacity: usize) -> Self {
        Self {
            kinds: [
                SpinLock::new(KindPool::new(capacity)),
                SpinLock::new(KindPool::new(capacity)),
                SpinLock::new(KindPool::new(capacity)),
                SpinLock::new(KindPool::new(capacity)),
                SpinLock::new(KindPool::new(capacity)),
                SpinLock::new(KindPool::new(capacity)),
            ],
            huge_pages: crate::sync::AtomicBool::new(false),
            clock: AtomicUsize::new(0),
            colour: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            kinds: core::array::from_fn(|_| SpinLock::new(KindPool::new(capacity))),
            huge_pages: crate::sync::AtomicBool::new(false),
            clock: AtomicUsize::new(0),
            colour: AtomicUsize::new(0),
        }
    }

    /// Allocate a large block of kind `kind` for `size` bytes, of class `class_bytes`
    /// (`large_size(size)`, which the caller has already worked out). Null on OS refusal.
    pub(crate) fn alloc(
        &self,
        kind: usize,
        size: usize,
        class_bytes: usize,
        align: usize,
    ) -> *mut u8 {
        let pool = &self.kinds[kind];
        let hit = pool.with(|p| {
            p.counters.requests = p.counters.requests.wrapping_add(1);
            p.counters.requested_bytes = p.counters.requested_bytes.wrapping_add(size as u64);
            // SAFETY: pool access under the lock.
            let h = unsafe { p.take(class_bytes, align) };
            if !h.is_null() {
                p.counters.hits = p.counters.hits.wrapping_add(1);
                // SAFETY: `h` is ours now.
                unsafe {
                    let need = ((*h).offset as usize + size).div_ceil(os::PAGE);
                    (*h).used_pages = (*h).used_pages.max(need as u32);
                    p.add_live((*h).size);
                    p.counters.granted_bytes =
                        p.counters.granted_bytes.wrapping_add((*h).size as u64);
                }
                p.sample(kind);
            }
            h
        });
        if !hit.is_null() {
            // SAFETY: the header is ours now; the block lies `offset` bytes after it.
            return unsafe { hit.cast::<u8>().add((*hit).offset as usize) };
        }
        self.alloc_fresh(kind, size, class_bytes, align)
    }

    /// Serve a request no cached block of its class could: pages moved from the least recently
    /// released cached blocks of any kind where there are some, fresh pages for the rest.
    #[cold]
    fn alloc_fresh(&self, kind: usize, size: usize, class_bytes: usize, align: usize) -> *mut u8 {
        // Colours go round in mapping order: blocks live at the same time get different ones.
        let colour = self.colour.fetch_add(1, Ordering::Relaxed);
        let offset = block_offset(align, colour);
        let Some(len) = map_len_for(offset, class_bytes) else {
            return ptr::null_mut();
        };
        let pool = &self.kinds[kind];
        // Make room first, so a kind at capacity gives memory back before taking more.
        let chain = pool.with(|p| {
            p.counters.live_bytes = p.counters.live_bytes.wrapping_add(class_bytes as u64);
            // SAFETY: pool access under the lock.
            let chain = unsafe { p.evict_over_capacity() };
            p.counters.live_bytes = p.counters.live_bytes.wrapping_sub(class_bytes as u64);
            chain
        });
        unmap_chain(chain);
        let base = map_for(len, offset, align);
        if base.is_null() {
            return base;
        }
        // Only the pages the request will use are worth filling: the class's slack beyond them
        // stays untouched virtual memory.
        let need = (offset + size + os::PAGE - 1) & !(os::PAGE - 1);
        let mut pieces = Pieces::NONE;
        let filled = if offset <= os::PAGE && need >= RECYCLE_MIN {
            self.recycle_into(base, need, &mut pieces)
        } else {
            0
        };
        if filled < len {
            pieces.push(len);
        }
        if filled == 0 && class_bytes >= HUGE_PAGE && self.huge_pages.load(Ordering::Relaxed) {
            // SAFETY: the block's range lies inside the fresh mapping.
            let start = unsafe { base.add(offset) };
            let huge_start = (start as usize + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
            let end = (start as usize + class_bytes) & !(HUGE_PAGE - 1);
            if end > huge_start {
                os::advise_huge(huge_start as *mut u8, end - huge_start);
                // The advice splits the mapping where it starts and ends.
                pieces = Pieces::NONE;
                for c in [huge_start - base as usize, end - base as usize, len] {
                    pieces.push(c);
                }
            }
        }
        let h = base.cast::<LargeHeader>();
        // SAFETY: a mapping of at least HEADER bytes, segment-aligned, ours alone.
        unsafe {
            h.write(LargeHeader {
                tag: LARGE_TAG,
                map_len: len,
                size: class_bytes,
                lru_prev: ptr::null_mut(),
                lru_next: ptr::null_mut(),
                class_next: ptr::null_mut(),
                released: 0,
                offset: offset as u32,
                kind: kind as u8,
                fresh: filled == 0,
                used_pages: (need / os::PAGE) as u32,
                pieces,
            });
        }
        pool.with(|p| {
            let c = &mut p.counters;
            c.os_maps = c.os_maps.wrapping_add(1);
            if filled >= need {
                c.recycled = c.recycled.wrapping_add(1);
            } else {
                c.misses = c.misses.wrapping_add(1);
            }
            c.recycled_bytes = c.recycled_bytes.wrapping_add(filled as u64);
            c.granted_bytes = c.granted_bytes.wrapping_add(class_bytes as u64);
            p.add_live(class_bytes);
            p.sample(kind);
        });
        // SAFETY: `offset + class_bytes <= len`, inside the mapping.
        unsafe { base.add(offset) }
    }

    /// Fill `dst[..need]` (a fresh reservation) with the pages of the least recently released
    /// cached blocks of any kind, moved by `mremap`: no data is copied and nothing faults. A
    /// block larger than what is missing gives its tail and stays cached, smaller, where it was
    /// in release order. Returns the bytes filled; `pieces` receives their mappings.
    fn recycle_into(&self, dst: *mut u8, need: usize, pieces: &mut Pieces) -> usize {
        let mut filled = 0;
        while filled < need {
            // One piece stays free for the fresh rest of the reservation.
            let room = (MAX_PIECES - 1).saturating_sub(pieces.n as usize);
            if room == 0 {
                break;
            }
            let v = self.pop_victim(need - filled, room);
            if v.is_null() {
                // What is cached is too fragmented to move here: release the least recently
                // released of it for the pages still missing, so resident memory stays bounded
                // by the live peak (the fresh pages fault once) and the mapping count shrinks.
                self.release_oldest(need - filled);
                break;
            }
            // SAFETY: `v` is off every list, so ours until we put it back or unmap it.
            let (vlen, voff, vkind, mut vp) = unsafe {
                (
                    (*v).map_len,
                    (*v).offset as usize,
                    (*v).kind as usize,
                    (*v).pieces,
                )
            };
            let vpool = &self.kinds[vkind];
            // Only the pages a use may have touched are worth moving; the untouched rest of
            // the block is virtual memory only, released for nothing.
            // SAFETY: `v` is ours.
            let used = (unsafe { (*v).used_pages } as usize * os::PAGE).min(vlen);
            if used < vlen {
                // SAFETY: `[used, vlen)` is mapped and holds no live data.
                os::unmap(unsafe { v.cast::<u8>().add(used) }, vlen - used);
                vp.truncate(used);
                // SAFETY: `v` is ours; `used` covers its header and one request's end.
                unsafe {
                    (*v).map_len = used;
                    (*v).size = used - voff;
                    (*v).pieces = vp;
                }
            }
            let (vlen, vsize) = (used, used - voff);
            let take = vlen.min(need - filled);
            let cut = vlen - take;
            // `pop_victim` chose a block that fits the table; this only guards the invariant.
            let too_many = vp.n == 0 || pieces.n as usize + vp.count_from(cut) >= MAX_PIECES;
            let moved = if too_many {
                0
            } else {
                // SAFETY: `[cut, vlen)` is mapped in `v`; `dst[filled..filled + take]` lies in
                // the reservation (`filled + take <= need`).
                unsafe { move_pieces(v.cast(), &vp, cut, vlen, dst, filled, pieces) }
            };
            filled += moved;
            let refused = moved < take;
            let left = if !refused && cut >= voff + REMAINDER_MIN {
                vp.truncate(cut);
                // SAFETY: the head of `v` (its header included) is still mapped and ours.
                unsafe {
                    (*v).map_len = cut;
                    (*v).size = cut - voff;
                    (*v).used_pages = (cut / os::PAGE) as u32;
                    (*v).pieces = vp;
                }
                cut - voff
            } else {
                // Release what is still mapped of `v`: the head, and whatever was not moved
                // (too fragmented to add, or refused by the kernel at the mapping count
                // limit). Never the ranges moved out: another mapping may lie there now.
                if cut + moved < vlen {
                    // SAFETY: `cut + moved <= vlen`.
                    os::unmap(
                        unsafe { v.cast::<u8>().add(cut + moved) },
                        vlen - cut - moved,
                    );
                }
                if cut > 0 {
                    os::unmap(v.cast(), cut);
                }
                0
            };
            let released = (vsize - left).saturating_sub(moved);
            vpool.with(|p| {
                let c = &mut p.counters;
                c.donated_bytes = c.donated_bytes.wrapping_add(moved as u64);
                if left > 0 {
                    // SAFETY: what is left of `v` is a valid cached block of this kind.
                    unsafe { p.put_back(v) };
                } else if cut > 0 || refused {
                    c.evictions = c.evictions.wrapping_add(1);
                    c.evicted_bytes = c.evicted_bytes.wrapping_add(released as u64);
                    c.os_unmaps = c.os_unmaps.wrapping_add(1);
                }
                p.sample(vkind);
            });
            if refused && !too_many {
                break;
            }
        }
        filled
    }

    /// Release least recently released cached blocks of any kind to the OS, at least `bytes`
    /// of them or all there are.
    fn release_oldest(&self, bytes: usize) {
        let mut freed = 0;
        while freed < bytes {
            let v = self.pop_victim(0, usize::MAX);
            if v.is_null() {
                return;
            }
            // SAFETY: `v` is off every list and ours.
            let (len, size, kind) = unsafe { ((*v).map_len, (*v).size, (*v).kind as usize) };
            os::unmap(v.cast(), len);
            freed += len;
            self.kinds[kind].with(|p| {
                let c = &mut p.counters;
                c.evictions = c.evictions.wrapping_add(1);
                c.evicted_bytes = c.evicted_bytes.wrapping_add(size as u64);
                c.os_unmaps = c.os_unmaps.wrapping_add(1);
                p.sample(kind);
            });
        }
    }

    /// Unlink the recycling victim across all kinds (see `KindPool::victim`), or null if nothing
    /// is cached.
    fn pop_victim(&self, want: usize, max_adds: usize) -> *mut LargeHeader {
        let mut best: Option<(bool, usize, usize)> = None;
        for (k, pool) in self.kinds.iter().enumerate() {
            if let Some((t, fits, _)) = pool.with(|p| p.victim(want, max_adds)) {
                // Fitting blocks first, then the least recently released.
                if best.is_none_or(|(bf, bt, _)| (fits, usize::MAX - t) > (bf, usize::MAX - bt)) {
                    best = Some((fits, t, k));
                }
            }
        }
        let Some((_, _, k)) = best else {
            return ptr::null_mut();
        };
        // Choose again under the lock: another thread may have changed the pool meanwhile.
        self.kinds[k].with(|p| match p.victim(want, max_adds) {
            // SAFETY: `victim` returns a cached block of this pool, under its lock.
            Some((_, _, h)) => unsafe {
                p.unlink(h);
                h
            },
            None => ptr::null_mut(),
        })
    }

    /// Free a large block back to its kind's pool.
    ///
    /// # Safety
    /// `h` is the header of a live large block.
    pub(crate) unsafe fn free(&self, h: *mut LargeHeader) {
        // SAFETY: a live block's header is valid and its kind in range.
        let kind = unsafe { (*h).kind } as usize;
        let chain = self.kinds[kind].with(|p| {
            // The stamp is taken under the kind's lock, so a kind's release-order list is sorted
            // by it (taken before the lock, two racing frees could join the list in the other
            // order: a loom model caught that).
            let now = self.clock.fetch_add(1, Ordering::Relaxed);
            // SAFETY: under the lock; `h` is live and joins the cache.
            unsafe {
                (*h).released = now;
                p.counters.live_bytes = p.counters.live_bytes.wrapping_sub((*h).size as u64);
                p.put(h);
                let chain = p.evict_over_capacity();
                p.sample(kind);
                chain
            }
        });
        unmap_chain(chain);
    }

    /// Release every cached block of every kind to the OS. Returns the bytes released.
    pub(crate) fn trim(&self) -> usize {
        let mut total = 0;
        for (kind, pool) in self.kinds.iter().enumerate() {
            let chain = pool.with(|p| {
                let mut chain: *mut LargeHeader = ptr::null_mut();
                loop {
                    // SAFETY: under the lock.
                    let h = unsafe { p.pop_lru() };
                    if h.is_null() {
                        break;
                    }
                    // SAFETY: `h` is off every list.
                    unsafe {
                        total += (*h).size;
                        (*h).lru_next = chain;
                    }
                    chain = h;
                }
                p.sample(kind);
                chain
            });
            unmap_chain(chain);
        }
        total
    }

    /// Try to resize a large block in place (within its class, or by growing its mapping without
    /// copying). Returns the block's new address, or null if the caller must allocate and copy.
    ///
    /// # Safety
    /// `h` is the header of the live large block at `p`, allocated with alignment `align`.
    pub(crate) unsafe fn realloc(
        &self,
        h: *mut LargeHeader,
        p: *mut u8,
        new_size: usize,
        align: usize,
    ) -> *mut u8 {
        // SAFETY: `h` is live and ours until we return.
        let (size, offset, map_len, kind) = unsafe {
            (
                (*h).size,
                (*h).offset as usize,
                (*h).map_len,
                (*h).kind as usize,
            )
        };
        if new_size <= size && new_size > size / 2 {
            return p;
        }
        // SAFETY: as above.
        let single = unsafe { (*h).pieces.n == 1 };
        if new_size <= size || size < MREMAP_MIN || !single {
            return ptr::null_mut();
        }
        let Some(new_class) = large_size(new_size) else {
            return ptr::null_mut();
        };
        let Some(new_len) = map_len_for(offset, new_class) else {
            return ptr::null_mut();
        };
        let mut base = h.cast::<u8>();
        if !os::grow_in_place(base, map_len, new_len) {
            // Move the pages to a fresh segment-aligned reservation: no data is copied.
            let dst = map_for(new_len, offset, align);
            if dst.is_null() {
                return ptr::null_mut();
            }
            if !os::move_to(base, map_len, new_len, dst) {
                os::unmap(dst, new_len);
                return ptr::null_mut();
            }
            base = dst;
        }
        let h = base.cast::<LargeHeader>();
        // SAFETY: the header moved with the pages and is still ours.
        unsafe {
            (*h).map_len = new_len;
            (*h).size = new_class;
            (*h).pieces = Pieces::whole(new_len);
            (*h).used_pages = new_len.div_ceil(os::PAGE) as u32;
        }
        self.kinds[kind].with(|p| {
            p.counters.live_bytes = p.counters.live_bytes.wrapping_sub(size as u64);
            p.add_live(new_class);
            p.sample(kind);
        });
        // SAFETY: the block keeps its offset in the (possibly moved) mapping.
        unsafe { base.add(offset) }
    }
}

/// One kind's cached blocks as a model sees them.
#[cfg(loom)]
#[derive(Debug, Clone)]
pub struct KindCensus {
    /// The kind's counters.
    pub counters: LargeCounters,
    /// Its soft capacity.
    pub capacity: usize,
    /// Cached blocks, most recently released first: (block address, usable bytes, release clock).
    pub cached: std::vec::Vec<(usize, usize, usize)>,
}

#[cfg(loom)]
impl LargePools {
    /// Check every kind's lists and return what they hold: release-order links consistent both
    /// ways, release clocks non-increasing from the most recent (LRU order is release order),
    /// every cached block on the class list of its size and no other, `cached_bytes` equal to
    /// the blocks' sizes. Panics (it is a model's assertion) on a violation.
    pub(crate) fn census(&self) -> std::vec::Vec<KindCensus> {
        (0..self.kinds.len())
            .map(|k| {
                // Assert after the lock is released: a panic under it would leave it held.
                match self.kinds[k].with(|p| Self::kind_census(k, p)) {
                    Ok(c) => c,
                    Err(e) => panic!("kind {k}: {e}"),
                }
            })
            .collect()
    }

    fn kind_census(k: usize, p: &KindPool) -> Result<KindCensus, std::string::String> {
        use std::format;
        let mut cached: std::vec::Vec<(usize, usize, usize)> = std::vec::Vec::new();
        let mut bytes = 0u64;
        let mut prev: *mut LargeHeader = ptr::null_mut();
        let mut h = p.lru_head;
        // SAFETY: list members are cached blocks of this pool, read under its lock.
        unsafe {
            while !h.is_null() {
                if (*h).lru_prev != prev {
                    return Err("broken back link".into());
                }
                if (*h).kind as usize != k {
                    return Err("a block of another kind".into());
                }
                if let Some(&(_, _, newer)) = cached.last() {
                    if newer < (*h).released {
                        return Err(format!(
                            "LRU order is not release order ({newer} before {})",
                            (*h).released
                        ));
                    }
                }
                cached.push((h as usize + (*h).offset as usize, (*h).size, (*h).released));
                bytes += (*h).size as u64;
                prev = h;
                h = (*h).lru_next;
            }
            if p.lru_tail != prev {
                return Err("the tail is not the last block".into());
            }
            let mut on_class = 0;
            for (idx, &head) in p.class_head.iter().enumerate() {
                let mut h = head;
                while !h.is_null() {
                    if large_index((*h).size) != idx {
                        return Err("a block on another class's list".into());
                    }
                    let addr = h as usize + (*h).offset as usize;
                    if !cached.iter().any(|&(a, _, _)| a == addr) {
                        return Err("a block on a class list is not cached".into());
                    }
                    on_class += 1;
                    h = (*h).class_next;
                }
            }
            if on_class != cached.len() {
                return Err(format!(
                    "{on_class} blocks on class lists, {} cached",
                    cached.len()
                ));
            }
        }
        if p.counters.cached_bytes != bytes {
            return Err(format!(
                "cached_bytes {} but the cached blocks hold {bytes}",
                p.counters.cached_bytes
            ));
        }
        Ok(KindCensus {
            counters: p.counters,
            capacity: p.capacity,
            cached,
        })
    }

    /// Set one kind's soft capacity.
    pub(crate) fn set_capacity(&self, kind: usize, bytes: usize) {
        self.kinds[kind].with(|p| p.capacity = bytes);
    }
}

/// Requests from this size on are served by recycling cached pages when their class has none:
/// below it, a few page faults cost less than the system calls.
const RECYCLE_MIN: usize = 256 * 1024;

/// How many of a kind's least recently released blocks recycling looks at for a good victim.
const VICTIM_SCAN: usize = 64;

/// A block that gives its tail to recycling stays cached if at least this much is left.
const REMAINDER_MIN: usize = 64 * 1024;

/// Below this, growing by allocate-and-copy is cheaper than remapping.
const MREMAP_MIN: usize = 256 * 1024;

/// Usable size and whether the memory is known zero, for a live large block.
///
/// # Safety
/// `h` is the header of a live large block.
pub(crate) unsafe fn info(h: *mut LargeHeader) -> (usize, bool) {
    // SAFETY: the caller guarantees `h` is live.
    unsafe { ((*h).size, (*h).fresh) }
}

/// A live block entering a thread's hot cache: its contents are no longer known zero. Returns
/// its start, usable size and kind.
///
/// # Safety
/// `h` is the header of a live large block.
pub(crate) unsafe fn prepare_hot(h: *mut LargeHeader) -> (*mut u8, usize, usize) {
    // SAFETY: the caller guarantees `h` is live, so its header is ours to update.
    unsafe {
        (*h).fresh = false;
        (
            h.cast::<u8>().add((*h).offset as usize),
            (*h).size,
            (*h).kind as usize,
        )
    }
}

/// A block from a thread's hot cache handed out again for a request of `size` bytes: the pages
/// the request may touch join the block's used prefix (which recycling moves).
///
/// # Safety
/// `h` is the header of a block in the calling thread's hot cache.
pub(crate) unsafe fn reuse(h: *mut LargeHeader, size: usize) {
    // SAFETY: the caller guarantees the block is the caller's alone.
    unsafe {
        let need = ((*h).offset as usize + size).div_ceil(os::PAGE);
        (*h).used_pages = (*h).used_pages.max(need as u32);
    }
}

/// Kind index of a live large block.
///
/// # Safety
/// `h` is the header of a live large block.
pub(crate) unsafe fn kind_of(h: *mut LargeHeader) -> usize {
    // SAFETY: the caller guarantees `h` is live.
    unsafe { (*h).kind as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_offsets() {
        let a = std::hint::black_box(8usize << 20);
        assert_eq!(block_offset(a, 3), SEGMENT_SIZE);
        assert_eq!(block_offset(std::hint::black_box(64), 0), HEADER);
        assert_eq!(block_offset(64, 1), HEADER + 64);
        assert_eq!(block_offset(64, COLOURS), HEADER, "colours wrap");
        for colour in 0..2 * COLOURS {
            let off = block_offset(64, colour);
            assert!((HEADER..os::PAGE).contains(&off), "colour {colour}: {off}");
            for shift in 0..=22 {
                let align = std::hint::black_box(1usize << shift);
                let off = block_offset(align, colour);
                assert!(
                    off >= HEADER && off % align == 0 && off <= SEGMENT_SIZE,
                    "align {align}: offset {off}"
                );
            }
        }
        assert_eq!(block_offset(std::hint::black_box(4096), 5), 4096);
    }
}
