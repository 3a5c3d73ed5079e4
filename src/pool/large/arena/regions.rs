//! Chunks and regions: mapping a chunk (where it is asked for; its advice is `huge`'s), how a
//! mapped chunk joins the region it touches, and how free extents are cut out of their regions
//! and unmapped when the OS refuses memory.

use super::*;

impl Arena {
    /// Map a chunk of at least `bytes` for `zone` (outside the lock) and add it. False if the
    /// OS refuses.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn grow(&self, zone: usize, bytes: usize) -> bool {
        let Some(min) = bytes.checked_next_multiple_of(CHUNK_ALIGN[zone]) else {
            return false;
        };
        let want = self.with(|s| s.chunk_next[zone]).max(min);
        // A seed for the first block chunk's place: the clock and this stack's address.
        let seed =
            (os::now_ns() ^ (&min as *const usize as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for len in [want, min] {
            let hint = self.with(|s| s.hint(zone, len, seed));
            let p = map_chunk(hint, len, CHUNK_ALIGN[zone]);
            if !p.is_null() {
                let (added, armed_now) = self.with(|s| {
                    if !s.reserve(1) {
                        os::unmap(p, len);
                        return (false, false);
                    }
                    s.add_chunk(zone, p as usize, len);
                    // Segments are advised one by one as heaps take them (`segment_alloc`).
                    (true, zone == BLOCKS && s.advise_block_chunk(p, len))
                });
                if armed_now {
                    self.advise_early_chunks();
                }
                self.collapse_owed();
                return added;
            }
            if len == min {
                break;
            }
        }
        false
    }

    /// The OS refused memory: unmap every free extent (dirty and clean, so that both memory
    /// and address space go back), to try once more.
    pub(crate) fn recover(&self) {
        let chain = self.with(|s| {
            s.totals.recoveries += 1;
            s.take_for_unmap(true)
        });
        self.unmap_chain(chain);
    }

    pub(super) fn unmap_chain(&self, chain: *mut Extent) {
        if chain.is_null() {
            return;
        }
        // A range owed a collapse may be among those unmapped, and the address reused by
        // another mapping: forget them all.
        self.with(|s| s.recollapse = [(0, 0); 4]);
        let mut e = chain;
        while !e.is_null() {
            // SAFETY: `Busy` extents cut out of their regions are ours alone.
            unsafe {
                os::unmap((*e).base as *mut u8, (*e).size);
                e = (*e).lru_next;
            }
        }
        // SAFETY: the chain is the one taken under the lock.
        self.with(|s| unsafe { s.finish_unmap(chain) });
    }
}

impl ArenaState {
    #[link_section = ".text.hot.tensorpool"]
    fn new_region(
        &mut self,
        zone: u8,
        base: usize,
        end: usize,
        first: *mut Extent,
        last: *mut Extent,
    ) {
        let r = if self.spare_regions.is_null() {
            self.meta
                .alloc(core::mem::size_of::<Region>(), 8)
                .cast::<Region>()
        } else {
            let r = self.spare_regions;
            // SAFETY: spare records are ours.
            self.spare_regions = unsafe { (*r).next };
            r
        };
        debug_assert!(!r.is_null(), "region reserve exhausted");
        // SAFETY: a record owned by the arena.
        unsafe {
            r.write(Region {
                zone,
                base,
                end,
                first,
                last,
                next: self.regions,
            });
        }
        self.regions = r;
        self.totals.regions += 1;
    }

    /// The region holding address `a`.
    pub(super) fn region_of(&self, a: usize) -> *mut Region {
        let mut r = self.regions;
        // SAFETY: region records are ours.
        unsafe {
            while !(r.is_null() || ((*r).base <= a && a < (*r).end)) {
                r = (*r).next;
            }
        }
        debug_assert!(!r.is_null(), "address {a:#x} in no region");
        r
    }

    fn drop_region(&mut self, dead: *mut Region) {
        let mut pp: *mut *mut Region = &mut self.regions;
        // SAFETY: region records are ours; `dead` is on the list.
        unsafe {
            while *pp != dead {
                pp = &mut (**pp).next;
            }
            *pp = (*dead).next;
            (*dead).next = self.spare_regions;
        }
        self.spare_regions = dead;
        self.totals.regions -= 1;
    }

    /// Where to ask for the next chunk of `len` bytes of `zone`: blocks just above their
    /// highest region (or, for the first, in `BLOCK_HINT`'s range, at `seed`'s offset);
    /// segments just below their lowest (the way the kernel itself places mappings), or
    /// wherever the kernel likes for the first.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn hint(&self, zone: usize, len: usize, seed: u64) -> usize {
        let (mut low, mut high) = (usize::MAX, 0usize);
        let mut r = self.regions;
        // SAFETY: region records are ours.
        unsafe {
            while !r.is_null() {
                if (*r).zone as usize == zone {
                    low = low.min((*r).base);
                    high = high.max((*r).end);
                }
                r = (*r).next;
            }
        }
        if zone == BLOCKS {
            if high == 0 {
                let (base, span) = BLOCK_HINT;
                let off = (seed as usize % span) & !(CHUNK_MAX - 1);
                return base + off;
            }
            return high;
        }
        if low == usize::MAX || low < len {
            0
        } else {
            (low - len) & !(CHUNK_ALIGN[zone] - 1)
        }
    }

    /// Add a freshly mapped chunk of `zone` as clean memory, merging it with a region of the
    /// zone it touches.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn add_chunk(&mut self, zone: usize, p: usize, len: usize) {
        let e = self.new_desc();
        // SAFETY: `e` is a fresh descriptor; region records and extents are ours.
        unsafe {
            (*e).base = p;
            (*e).size = len;
            (*e).zone = zone as u8;
            let end = p + len;
            let mut below: *mut Region = ptr::null_mut(); // ends where the chunk starts
            let mut above: *mut Region = ptr::null_mut(); // starts where the chunk ends
            let mut r = self.regions;
            while !r.is_null() {
                if (*r).zone as usize == zone && (*r).end == p {
                    below = r;
                }
                if (*r).zone as usize == zone && (*r).base == end {
                    above = r;
                }
                r = (*r).next;
            }
            match (below.is_null(), above.is_null()) {
                (true, true) => self.new_region(zone as u8, p, end, e, e),
                (false, true) => {
                    let last = (*below).last;
                    (*last).next = e;
                    (*e).prev = last;
                    (*below).last = e;
                    (*below).end = end;
                }
                (true, false) => {
                    let first = (*above).first;
                    (*first).prev = e;
                    (*e).next = first;
                    (*above).first = e;
                    (*above).base = p;
                }
                (false, false) => {
                    let (last, first) = ((*below).last, (*above).first);
                    (*last).next = e;
                    (*e).prev = last;
                    (*first).prev = e;
                    (*e).next = first;
                    (*below).last = (*above).last;
                    (*below).end = (*above).end;
                    self.drop_region(above);
                }
            }
            self.put_clean(e, true);
        }
        self.totals.mapped_bytes += len as u64;
        self.totals.chunk_maps += 1;
        self.chunk_next[zone] = (self.chunk_next[zone] * 2).min(CHUNK_MAX);
    }

    /// Take free extents out of their region for unmapping: every free extent when `all`,
    /// else the clean ones that fill a region alone. Returns a `Busy` chain.
    pub(super) fn take_for_unmap(&mut self, all: bool) -> *mut Extent {
        let mut chain: *mut Extent = ptr::null_mut();
        let mut r = self.regions;
        // SAFETY: regions and extents are ours; each region is split or dropped around what is
        // taken, so the tiling holds for what stays.
        unsafe {
            while !r.is_null() {
                let next_r = (*r).next;
                let mut e = (*r).first;
                while !e.is_null() {
                    let next = (*e).next;
                    let st = (*e).state();
                    let whole = (*e).prev.is_null() && next.is_null();
                    if (all && st.is_free()) || (st == State::Clean && whole) {
                        if !self.reserve(0) {
                            return chain;
                        }
                        self.detach_run(e);
                        self.unfree(e);
                        let (p, n) = ((*e).prev, (*e).next);
                        self.cut_out(e);
                        self.attach_run(p);
                        self.attach_run(n);
                        self.busy += (*e).size as u64;
                        (*e).lru_next = chain;
                        chain = e;
                    }
                    e = next;
                }
                r = next_r;
            }
        }
        self.decay.note(self.dirty_bytes, self.live);
        chain
    }

    /// Remove `e` from its region's address list, splitting or dropping the region.
    ///
    /// # Safety
    /// `e` is ours and in its region's list.
    unsafe fn cut_out(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            let r = self.region_of((*e).base);
            let (p, n) = ((*e).prev, (*e).next);
            match (p.is_null(), n.is_null()) {
                (true, true) => self.drop_region(r),
                (true, false) => {
                    (*n).prev = ptr::null_mut();
                    (*r).first = n;
                    (*r).base = (*e).end();
                }
                (false, true) => {
                    (*p).next = ptr::null_mut();
                    (*r).last = p;
                    (*r).end = (*e).base;
                }
                (false, false) => {
                    (*p).next = ptr::null_mut();
                    (*n).prev = ptr::null_mut();
                    let (old_end, old_last) = ((*r).end, (*r).last);
                    (*r).end = (*e).base;
                    (*r).last = p;
                    self.new_region((*r).zone, (*e).end(), old_end, n, old_last);
                }
            }
            (*e).prev = ptr::null_mut();
            (*e).next = ptr::null_mut();
        }
    }

    /// Unmapped extents are forgotten.
    ///
    /// # Safety
    /// `chain` links `Busy` extents of ours, cut out of their regions, through `lru_next`.
    pub(super) unsafe fn finish_unmap(&mut self, mut chain: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            while !chain.is_null() {
                let next = (*chain).lru_next;
                let n = (*chain).size as u64;
                self.busy -= n;
                self.totals.mapped_bytes -= n;
                self.totals.unmaps += 1;
                self.free_desc(chain);
                chain = next;
            }
        }
    }
}

/// Map a chunk of `len` bytes aligned to `align`, at `hint` if possible. Null on refusal.
#[link_section = ".text.hot.tensorpool"]
pub(super) fn map_chunk(hint: usize, len: usize, align: usize) -> *mut u8 {
    if hint != 0 {
        let p = os::map_near(hint as *mut u8, len);
        if p.is_null() {
            return p;
        }
        if p as usize % align == 0 && (p as usize + len) >> pagemap::ADDR_BITS == 0 {
            return p;
        }
        os::unmap(p, len);
    }
    let p = os::map_aligned(len, align);
    if !p.is_null() && (p as usize + len) >> pagemap::ADDR_BITS != 0 {
        os::unmap(p, len);
        return ptr::null_mut();
    }
    p
}
