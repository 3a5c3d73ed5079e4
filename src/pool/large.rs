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

use super::slab::SEGMENT_SIZE;
use crate::class::{large_index, large_size, NUM_LARGE};
use crate::os;
use crate::sync::SpinLock;
use core::ptr;

/// First word of a large block's header.
pub(crate) const LARGE_TAG: usize = 0x7e45_0a11_5e60_0002;

/// Header size: one cache line, so 64-aligned blocks lose only 64 bytes.
const HEADER: usize = 64;

#[repr(C, align(64))]
pub(crate) struct LargeHeader {
    /// `LARGE_TAG`.
    tag: usize,
    /// Bytes mapped from the header on.
    map_len: usize,
    /// Block start minus header address.
    offset: usize,
    /// Usable bytes (the class size).
    size: usize,
    /// Links in the kind's release-order list (`prev` towards the most recent).
    lru_prev: *mut LargeHeader,
    lru_next: *mut LargeHeader,
    /// Links in the class free list.
    class_next: *mut LargeHeader,
    /// Tensor kind index, whether the memory is known zero, whether it is cached (free).
    kind: u8,
    fresh: bool,
    cached: bool,
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
                evictions: 0,
                evicted_bytes: 0,
                os_maps: 0,
                os_unmaps: 0,
                over_capacity: 0,
            },
        }
    }

    /// Take a cached block of at least `class_bytes` (its own class first, then up to four larger
    /// classes, at most twice the size: blocks that grew by `realloc` serve the next request's
    /// smaller start) whose block start is `align`-aligned.
    unsafe fn take(&mut self, class_bytes: usize, align: usize) -> *mut LargeHeader {
        let first = large_index(class_bytes);
        for idx in first..(first + 5).min(NUM_LARGE) {
            let mut prev: *mut LargeHeader = ptr::null_mut();
            let mut h = self.class_head[idx];
            // SAFETY: every header on the lists is a live mapping owned by this pool.
            unsafe {
                while !h.is_null() {
                    if (h as usize + (*h).offset) % align == 0 {
                        if prev.is_null() {
                            self.class_head[idx] = (*h).class_next;
                        } else {
                            (*prev).class_next = (*h).class_next;
                        }
                        self.lru_unlink(h);
                        (*h).cached = false;
                        self.counters.cached_bytes =
                            self.counters.cached_bytes.wrapping_sub((*h).size as u64);
                        return h;
                    }
                    prev = h;
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
        unsafe {
            let idx = large_index((*h).size);
            (*h).class_next = self.class_head[idx];
            self.class_head[idx] = h;
            (*h).lru_prev = ptr::null_mut();
            (*h).lru_next = self.lru_head;
            if self.lru_head.is_null() {
                self.lru_tail = h;
            } else {
                (*self.lru_head).lru_prev = h;
            }
            self.lru_head = h;
            (*h).cached = true;
            (*h).fresh = false;
            self.counters.cached_bytes = self.counters.cached_bytes.wrapping_add((*h).size as u64);
        }
    }

    /// Unlink the least recently released cached block, or null.
    unsafe fn pop_lru(&mut self) -> *mut LargeHeader {
        let h = self.lru_tail;
        if h.is_null() {
            return h;
        }
        // SAFETY: `h` is cached, so it is on its class list and the release-order list.
        unsafe {
            self.lru_unlink(h);
            let idx = large_index((*h).size);
            let mut pp: *mut *mut LargeHeader = &mut self.class_head[idx];
            while *pp != h {
                pp = &mut (**pp).class_next;
            }
            *pp = (*h).class_next;
            (*h).cached = false;
            self.counters.cached_bytes = self.counters.cached_bytes.wrapping_sub((*h).size as u64);
            self.counters.evictions = self.counters.evictions.wrapping_add(1);
            self.counters.evicted_bytes =
                self.counters.evicted_bytes.wrapping_add((*h).size as u64);
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

/// Unmap every block of an eviction chain.
fn unmap_chain(mut h: *mut LargeHeader) {
    while !h.is_null() {
        // SAFETY: chain members are off all lists and owned by the caller.
        let (next, len) = unsafe { ((*h).lru_next, (*h).map_len) };
        os::unmap(h.cast(), len);
        h = next;
    }
}

/// Where the block starts relative to its header for an alignment.
fn block_offset(align: usize) -> usize {
    align.clamp(HEADER, SEGMENT_SIZE)
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
        }
    }

    /// Allocate a large block of kind `kind`. Null on overflow or OS refusal.
    pub(crate) fn alloc(&self, kind: usize, size: usize, align: usize) -> *mut u8 {
        let Some(class_bytes) = large_size(size) else {
            return ptr::null_mut();
        };
        let pool = &self.kinds[kind];
        let hit = pool.with(|p| {
            p.counters.requests = p.counters.requests.wrapping_add(1);
            p.counters.requested_bytes = p.counters.requested_bytes.wrapping_add(size as u64);
            // SAFETY: pool access under the lock.
            let h = unsafe { p.take(class_bytes, align) };
            if !h.is_null() {
                p.counters.hits = p.counters.hits.wrapping_add(1);
                // SAFETY: `h` is ours now.
                p.add_live(unsafe { (*h).size });
            }
            h
        });
        if !hit.is_null() {
            // SAFETY: the header is ours now; the block lies `offset` bytes after it.
            return unsafe { hit.cast::<u8>().add((*hit).offset) };
        }
        self.alloc_fresh(kind, class_bytes, align)
    }

    #[cold]
    fn alloc_fresh(&self, kind: usize, class_bytes: usize, align: usize) -> *mut u8 {
        let offset = block_offset(align);
        let Some(len) = map_len_for(offset, class_bytes) else {
            return ptr::null_mut();
        };
        let pool = &self.kinds[kind];
        // Make room first, so a kind at capacity gives memory back before taking more.
        let chain = pool.with(|p| {
            p.counters.misses = p.counters.misses.wrapping_add(1);
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
        if class_bytes >= HUGE_PAGE && self.huge_pages.load(crate::sync::Ordering::Relaxed) {
            // SAFETY: the block's range lies inside the fresh mapping.
            let start = unsafe { base.add(offset) };
            let huge_start = ((start as usize + HUGE_PAGE - 1) & !(HUGE_PAGE - 1)) as *mut u8;
            let end = (start as usize + class_bytes) & !(HUGE_PAGE - 1);
            if end > huge_start as usize {
                os::advise_huge(huge_start, end - huge_start as usize);
            }
        }
        let h = base.cast::<LargeHeader>();
        // SAFETY: fresh mapping of at least HEADER bytes, segment-aligned.
        unsafe {
            h.write(LargeHeader {
                tag: LARGE_TAG,
                map_len: len,
                offset,
                size: class_bytes,
                lru_prev: ptr::null_mut(),
                lru_next: ptr::null_mut(),
                class_next: ptr::null_mut(),
                kind: kind as u8,
                fresh: true,
                cached: false,
            });
        }
        pool.with(|p| {
            p.counters.os_maps = p.counters.os_maps.wrapping_add(1);
            p.add_live(class_bytes);
        });
        // SAFETY: `offset + class_bytes <= len`, inside the mapping.
        unsafe { base.add(offset) }
    }

    /// Free a large block back to its kind's pool.
    ///
    /// # Safety
    /// `h` is the header of a live large block.
    pub(crate) unsafe fn free(&self, h: *mut LargeHeader) {
        // SAFETY: a live block's header is valid and its kind in range.
        let kind = unsafe { (*h).kind } as usize;
        let chain = self.kinds[kind].with(|p| {
            // SAFETY: under the lock; `h` is live and joins the cache.
            unsafe {
                p.counters.live_bytes = p.counters.live_bytes.wrapping_sub((*h).size as u64);
                p.put(h);
                p.evict_over_capacity()
            }
        });
        unmap_chain(chain);
    }

    /// Release every cached block of every kind to the OS. Returns the bytes released.
    pub(crate) fn trim(&self) -> usize {
        let mut total = 0;
        for pool in &self.kinds {
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
        let (size, offset, map_len, kind) =
            unsafe { ((*h).size, (*h).offset, (*h).map_len, (*h).kind as usize) };
        if new_size <= size && new_size > size / 2 {
            return p;
        }
        if new_size <= size || size < MREMAP_MIN {
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
        }
        self.kinds[kind].with(|p| {
            p.counters.live_bytes = p.counters.live_bytes.wrapping_sub(size as u64);
            p.add_live(new_class);
        });
        // SAFETY: the block keeps its offset in the (possibly moved) mapping.
        unsafe { base.add(offset) }
    }
}

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
        assert_eq!(block_offset(a), SEGMENT_SIZE);
        assert_eq!(block_offset(std::hint::black_box(64)), HEADER);
        assert_eq!(block_offset(std::hint::black_box(4096)), 4096);
    }
}
