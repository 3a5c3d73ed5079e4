//! Taking and releasing, under the lock: where a request goes in its extent (`placement`), one
//! attempt at a request (`try_take`: first fit, the capacity and the bound before fresh pages),
//! counting a block or segment out (`hand_out`) and back in (`release`).

use super::*;

impl ArenaState {
    /// Where a block of `size` bytes aligned to `align` starts in its extent, the extent's size,
    /// and the alignment the extent needs.
    #[link_section = ".text.hot.tensorpool"]
    fn placement(&mut self, u: Use, size: usize, align: usize) -> Option<(usize, usize, usize)> {
        let (off, ealign): (usize, usize) = match u {
            Use::Segment => (0, size),
            Use::Block(_) if align >= PAGE => (0, align),
            // No block starts on a huge-page boundary of its own accord, even a big one: the
            // block zone is advised as a whole, so a block packed against its neighbour is on
            // huge pages all the same, and the space an aligned start leaves before it is
            // resident once the huge page it shares is touched (RSS / live 1.129 on the
            // tensor trace with 2 MiB starts, 1.028 packed; docs/design.md, "Huge pages").
            Use::Block(_) => {
                if size < COLOUR_MAX {
                    self.colour = self.colour.wrapping_add(1);
                    let off = ((self.colour % COLOURS) * 64).next_multiple_of(align) % PAGE;
                    // Room for the largest colour whatever this one is: blocks of one size
                    // always take extents of one size, so a freed block's extent fits the next
                    // block of its size (with colours of their own, they would not, and every
                    // free would leave a hole one page short).
                    let need = size
                        .checked_add(COLOUR_SPAN)?
                        .checked_next_multiple_of(PAGE)?;
                    return Some((off, need, PAGE));
                }
                (0, PAGE)
            }
        };
        let need = off.checked_add(size)?.checked_next_multiple_of(PAGE)?;
        Some((off, need, ealign))
    }

    /// One attempt at a request, under the lock. With `resident_only`, a request that would
    /// fault fresh pages in (or grow the arena) is answered `Step::Fresh` instead.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn try_take(
        &mut self,
        map: &PageMap,
        u: Use,
        size: usize,
        align: usize,
        now: u64,
        resident_only: bool,
    ) -> Step {
        if self.advise_meta() {
            return Step::Advise;
        }
        if !self.reserve(4) {
            return Step::NoMeta;
        }
        let chain = self.advance(now);
        if !chain.is_null() {
            return Step::Purge(chain);
        }
        let Some((off, need, ealign)) = self.placement(u, size, align) else {
            return Step::Fail;
        };
        // Before this request's pages are touched, so that they can be huge.
        if u != Use::Segment && self.arms(size, need) {
            return Step::Advise;
        }
        // The oldest memory first: blocks take the lowest-addressed fit, at its low end (the
        // zone grows upwards: see `BLOCK_HINT`); segments the highest, at its high end (the
        // zone grows downwards, each chunk mapped below the last). Lowest first for segments
        // took a new chunk's clean pages before the dirty ones of segments given back: a program
        // that freed a 356 MB JSON tree and parsed another faulted 220 MB fresh while 96 MB
        // of freed segments stayed dirty (peak RSS 1.15x mimalloc's).
        let zone = u.zone();
        let (h, a) = if zone == SEGMENTS {
            self.runs[zone].last_fit(need, ealign)
        } else {
            self.runs[zone].first_fit(need, ealign)
        };
        if h.is_null() {
            if resident_only {
                return Step::Fresh;
            }
            // A fresh chunk starts on its zone's boundary: an alignment up to that needs no
            // slack.
            let slack = if ealign <= CHUNK_ALIGN[zone] {
                0
            } else {
                ealign - PAGE
            };
            return match need.checked_add(slack) {
                Some(b) => Step::Grow(zone, b),
                None => Step::Fail,
            };
        }
        // SAFETY: `h` is the first extent of a run holding `[a, a + need)`.
        let fresh = unsafe { Self::clean_in(h, a, need) };
        if fresh > 0 && resident_only {
            return Step::Fresh;
        }
        if fresh > 0 {
            // Fresh pages: first keep the kind within its configured capacity, and
            // `live + dirty` within the bound that follows the workload.
            if let Use::Block(k) = u {
                let cap = self.capacity[k];
                let held = self.kinds[k].live_bytes + self.attr_bytes[k] + fresh;
                if cap != AUTO && held > cap as u64 && self.attr_bytes[k] > 0 {
                    let chain = self.take_dirty(held - cap as u64, Some(k), Cause::Capacity);
                    if !chain.is_null() {
                        return Step::Purge(chain);
                    }
                }
            }
            // What stays cached once this takes its dirty part: within the bound?
            let kept = self.dirty_bytes - (need as u64 - fresh);
            let excess = kept.saturating_sub(self.decay.cache_bound(None));
            if excess > 0 {
                let chain = self.take_dirty(excess, None, Cause::Bound);
                if !chain.is_null() {
                    return Step::Purge(chain);
                }
            }
            // And `live + dirty` within the footprint bound, by whole huge pages only.
            let live_after = self.live + need as u64;
            let excess = (live_after + kept).saturating_sub(self.decay.footprint_bound(live_after));
            if excess > 0 {
                let mut chain = ptr::null_mut();
                let taken = self.take_huge_pages(&mut chain, excess, None, Cause::Bound);
                if !chain.is_null() {
                    self.note_taken(taken, Cause::Bound);
                    return Step::Purge(chain);
                }
            }
        }
        // Make sure the page map can record the block before anything is cut.
        if !map.prepare(a, &mut self.map_meta) {
            return Step::NoMeta;
        }
        // SAFETY: `h` heads a run holding `[a, a + need)`; spares are reserved.
        let (e, taken, fresh, zero) = unsafe { self.carve(h, a, need, u.attr()) };
        self.decay.note(self.dirty_bytes, self.live);
        // SAFETY: `e` is ours, off every list.
        Step::Done(unsafe { self.hand_out(map, e, u, off, size, &taken, fresh, zero) })
    }

    /// Bytes of clean extents within `[a, a + need)` of the run starting at `h` (the pages a
    /// block placed there would fault in).
    ///
    /// # Safety
    /// `h` heads a run holding the range.
    unsafe fn clean_in(h: *mut Extent, a: usize, need: usize) -> u64 {
        let (mut x, end, mut n) = (h, a + need, 0);
        // SAFETY: run members are our extents.
        unsafe {
            while !x.is_null() && (*x).base < end {
                if (*x).state() == State::Clean {
                    let lo = (*x).base.max(a);
                    let hi = (*x).end().min(end);
                    n += hi.saturating_sub(lo) as u64;
                }
                x = (*x).next;
            }
        }
        n
    }

    /// Turn a carved extent into a live block or segment and count it; `taken` is the dirty
    /// memory it took, by the kind that released it, `fresh` the clean bytes, `zero` whether it
    /// all reads as zero.
    ///
    /// # Safety
    /// `e` is ours, `Busy` off every tree and list; `map.prepare` succeeded for its base.
    #[allow(clippy::too_many_arguments)]
    #[link_section = ".text.hot.tensorpool"]
    unsafe fn hand_out(
        &mut self,
        map: &PageMap,
        e: *mut Extent,
        u: Use,
        off: usize,
        size: usize,
        taken: &[u64; ATTRS],
        fresh_bytes: u64,
        zero: bool,
    ) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            let fresh = fresh_bytes > 0;
            (*e).zero = zero;
            let bytes = (*e).size;
            self.live += bytes as u64;
            for (from, &b) in taken.iter().enumerate().take(NUM_KINDS) {
                if Use::Block(from) != u {
                    self.kinds[from].donated_bytes += b;
                }
            }
            match u {
                Use::Segment => {
                    (*e).set_state(State::Segment);
                    (*e).kind = SLAB as u8;
                    self.totals.segment_bytes += bytes as u64;
                    self.decay.note_live(self.live, None);
                    map.set((*e).base, e.cast());
                    pagemap::set_small((*e).base as *const u8, true);
                }
                Use::Block(kind) => {
                    (*e).kind = kind as u8;
                    (*e).sampled = false;
                    (*e).owner = 0;
                    (*e).start.store((*e).base + off, Relaxed);
                    (*e).set_state(State::Live);
                    map.set((*e).base, e.cast());
                    self.totals.live_bytes += bytes as u64;
                    let cap = self.capacity[kind];
                    let cached = self.attr_bytes[kind];
                    let c = &mut self.kinds[kind];
                    c.requests += 1;
                    c.requested_bytes += size as u64;
                    c.granted_bytes += bytes as u64;
                    c.live_bytes += bytes as u64;
                    crate::stats::held_add(kind, bytes as u64);
                    let kl = c.live_bytes;
                    self.decay.note_live(self.live, Some((kind, kl)));
                    c.fresh_bytes += fresh_bytes;
                    if fresh {
                        c.misses += 1;
                    } else {
                        c.hits += 1;
                        let foreign: u64 = bytes as u64 - taken[kind];
                        if foreign > 0 {
                            c.recycled += 1;
                            c.recycled_bytes += foreign;
                        }
                    }
                    if cap != AUTO && self.kinds[kind].live_bytes + cached > cap as u64 {
                        self.kinds[kind].over_capacity += 1;
                    }
                    self.sample(kind);
                }
            }
            e
        }
    }

    /// A live block or segment comes back. Returns a chain of extents to purge.
    ///
    /// # Safety
    /// `e` is our live (or hot) block or segment.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn release(&mut self, e: *mut Extent, now: u64) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            let bytes = (*e).size as u64;
            let attr = match (*e).state() {
                State::Segment => {
                    pagemap::set_small((*e).base as *const u8, false);
                    (*e).start.store(0, Relaxed);
                    self.totals.segment_bytes -= bytes;
                    SLAB
                }
                st => {
                    let k = (*e).kind as usize;
                    (*e).start.store(0, Relaxed);
                    // A block from a thread cache was subtracted when it entered it.
                    if st == State::Live {
                        crate::stats::held_sub(k, bytes);
                    }
                    self.kinds[k].live_bytes -= bytes;
                    self.totals.live_bytes -= bytes;
                    k
                }
            };
            self.live -= bytes;
            let mut chain = ptr::null_mut();
            if self.decay.immediate() {
                (*e).set_state(State::Busy);
                (*e).lru_next = ptr::null_mut();
                self.busy += bytes;
                let mut c = [0; ATTRS];
                c[attr] = bytes;
                self.count_purge(&c, Cause::Decay);
                chain = e;
            } else {
                self.put_dirty(e, attr);
                if attr < NUM_KINDS && self.capacity[attr] != AUTO {
                    let held = self.kinds[attr].live_bytes + self.attr_bytes[attr];
                    let over = held.saturating_sub(self.capacity[attr] as u64);
                    if over > 0 {
                        chain = self.take_dirty(over, Some(attr), Cause::Capacity);
                    }
                }
            }
            if attr < NUM_KINDS {
                self.sample(attr);
            }
            let more = self.advance(now);
            concat(chain, more)
        }
    }

    /// Timeline sample of one kind (under the lock, so a kind's samples are in event order).
    #[inline]
    pub(super) fn sample(&self, kind: usize) {
        if crate::timeline::enabled() {
            let held = crate::stats::HELD[kind].get();
            crate::timeline::record(kind, held, self.attr_bytes[kind]);
        }
    }
}
