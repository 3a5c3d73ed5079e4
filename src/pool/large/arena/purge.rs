//! Returning dirty memory, under the lock: what a purge takes (`take_dirty`: whole huge pages
//! first, then ends, oldest first), decay's advance, the purge counters, and putting purged
//! extents back clean; and the decay time and purge advice published for the heaps, which
//! purge their own idle slab pages (`heap::purge`).

use super::*;

/// `Arena::policy` when memory never decays.
pub(super) const POLICY_NEVER: u64 = u64::MAX;

impl Arena {
    /// The decay time in force (ns; `None`: memory never decays) and whether purges are lazy
    /// (`MADV_FREE`), read without the lock.
    #[inline]
    pub(crate) fn purge_policy(&self) -> Option<(u64, bool)> {
        let p = !self.policy_not.load(Relaxed);
        (p != POLICY_NEVER).then_some((p >> 1, p & 1 != 0))
    }
}

impl ArenaState {
    /// `Arena::policy`: the decay time in ns, shifted left once, with the lazy-purge bit.
    pub(super) fn purge_policy(&self) -> u64 {
        let ms = self.decay.ms();
        if ms < 0 {
            return POLICY_NEVER;
        }
        (ms as u64).saturating_mul(1_000_000).min(u64::MAX >> 2) << 1 | self.lazy_purge as u64
    }

    /// Take at least `bytes` (page-rounded) of the least recently released dirty memory (holding
    /// bytes of `attr`, or any) out of the dirty set, as a chain of `Busy` extents to purge.
    ///
    /// With huge pages on, a first pass takes only whole huge pages of the block zone (the
    /// aligned inside of each dirty extent, oldest first): `MADV_DONTNEED` on part of a huge
    /// page splits it into 512 small ones, and the rest of it stays resident. A second pass, as
    /// with huge pages off, takes what is still wanted from any dirty extent, each one's high
    /// end (blocks are placed low first), and counts the huge pages it cuts into.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn take_dirty(
        &mut self,
        bytes: u64,
        attr: Option<usize>,
        cause: Cause,
    ) -> *mut Extent {
        let mut chain: *mut Extent = ptr::null_mut();
        let mut taken = self.take_huge_pages(&mut chain, bytes, attr, cause);
        let first = attr.unwrap_or(0);
        while taken < bytes {
            let x = self.oldest(attr);
            if x.is_null() || !self.reserve(2) {
                break;
            }
            let want = (bytes - taken).min(usize::MAX as u64) as usize;
            let want = want.checked_next_multiple_of(PAGE).unwrap_or(usize::MAX);
            // SAFETY: `x` is our dirty extent; spares are reserved.
            let y = unsafe {
                self.detach_run(x);
                let y = if (*x).size > want {
                    self.split(x, (*x).end() - want, Prefer::Own(first))
                } else {
                    x
                };
                if self.huge_pages && (*y).zone as usize == BLOCKS {
                    let cuts = usize::from((*y).base % HUGE_PAGE != 0)
                        + usize::from((*y).end() % HUGE_PAGE != 0);
                    self.totals.huge_page_cuts += cuts as u64;
                }
                y
            };
            // SAFETY: `y` is our free extent, its run out of the tree.
            taken += unsafe { self.chain_purge(&mut chain, y, cause) };
        }
        self.note_taken(taken, cause);
        chain
    }

    /// After `taken` bytes went out of the dirty set for `cause`: decay's windows see the new
    /// dirty count, and what decay or the bound took no longer counts as idle or over the bound.
    pub(super) fn note_taken(&mut self, taken: u64, cause: Cause) {
        self.decay.note(self.dirty_bytes, self.live);
        if matches!(cause, Cause::Decay | Cause::Bound) {
            self.decay.purged(taken);
        }
    }

    /// `take_dirty`'s first pass: with huge pages on, whole huge pages of the block zone's dirty
    /// memory (holding bytes of `attr`, or any), oldest first, until `bytes` are taken; onto
    /// `chain`. Returns the bytes taken (0 with huge pages off).
    pub(super) fn take_huge_pages(
        &mut self,
        chain: &mut *mut Extent,
        bytes: u64,
        attr: Option<usize>,
        cause: Cause,
    ) -> u64 {
        let mut taken = 0u64;
        if !self.huge_pages {
            return 0;
        }
        let first = attr.unwrap_or(0);
        let mut x = self.oldest(attr);
        while taken < bytes && !x.is_null() && self.reserve(2) {
            // SAFETY: `x` is our dirty extent on the release-order list.
            let newer = unsafe { (*x).lru_prev };
            // SAFETY: as above; spares are reserved.
            if let Some(y) = unsafe { self.take_whole_huge(x, bytes - taken, first) } {
                // SAFETY: `y` is ours and off every tree and list.
                taken += unsafe { self.chain_purge(chain, y, cause) };
            }
            // SAFETY: `newer` is null or on the list (the cut pieces went in older).
            x = unsafe { Self::holding(newer, attr) };
        }
        taken
    }

    /// Cut the whole huge pages of dirty extent `x` (its 2 MiB-aligned inside; the highest
    /// ones first, at most `want` bytes rounded up to whole huge pages) out of the dirty set,
    /// leaving the ends dirty in place. `None`, with nothing changed, when `x` holds no whole
    /// huge page or is not in the block zone. The returned extent is free, its run detached.
    ///
    /// # Safety
    /// `x` is our dirty extent on the release-order list; two spare descriptors exist.
    unsafe fn take_whole_huge(
        &mut self,
        x: *mut Extent,
        want: u64,
        first: usize,
    ) -> Option<*mut Extent> {
        // SAFETY: the caller's contract.
        unsafe {
            if (*x).zone as usize != BLOCKS {
                return None;
            }
            let lo = (*x).base.next_multiple_of(HUGE_PAGE);
            let hi = (*x).end() & !(HUGE_PAGE - 1);
            if hi <= lo {
                return None;
            }
            let want = want.min((hi - lo) as u64) as usize;
            let start = hi - want.next_multiple_of(HUGE_PAGE).min(hi - lo);
            self.detach_run(x);
            if hi < (*x).end() {
                self.split(x, hi, Prefer::Others(first));
            }
            let y = if start > (*x).base {
                self.split(x, start, Prefer::Own(first))
            } else {
                x
            };
            Some(y)
        }
    }

    /// Take free extent `y` (its run detached) out of the free set, re-attach its neighbours'
    /// runs and put it on the purge `chain`; its size.
    ///
    /// # Safety
    /// `y` is our free extent whose run is out of the tree.
    #[link_section = ".text.hot.tensorpool"]
    unsafe fn chain_purge(&mut self, chain: &mut *mut Extent, y: *mut Extent, cause: Cause) -> u64 {
        // SAFETY: the caller's contract.
        unsafe {
            let c = self.unfree(y);
            self.attach_run((*y).prev);
            self.attach_run((*y).next);
            (*y).lru_next = *chain;
            let n = (*y).size as u64;
            self.busy += n;
            self.count_purge(&c, cause);
            *chain = y;
            n
        }
    }

    /// Count a purge of memory released by the kinds in `c`.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn count_purge(&mut self, c: &[u64; ATTRS], cause: Cause) {
        let bytes: u64 = c.iter().sum();
        let t = &mut self.totals;
        t.purges += 1;
        t.purged_bytes += bytes;
        match cause {
            Cause::Decay => t.decay_purged_bytes += bytes,
            Cause::Bound => t.bound_purged_bytes += bytes,
            Cause::Capacity => t.capacity_purged_bytes += bytes,
            Cause::Trim => {}
        }
        for (k, &b) in c.iter().enumerate().take(NUM_KINDS) {
            if b > 0 {
                self.kinds[k].evictions += 1;
                self.kinds[k].evicted_bytes += b;
            }
        }
    }

    /// Move the decay clocks; a chain of dirty memory to purge (idle for a whole period, or
    /// over the bound now that the recent peak has moved), or null.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn advance(&mut self, now: u64) -> *mut Extent {
        let mut live = [0; NUM_KINDS + 1];
        for (l, k) in live.iter_mut().zip(&self.kinds) {
            *l = k.live_bytes;
        }
        live[NUM_KINDS] = self.live;
        let (idle, over) = self.decay.advance(now, self.dirty_bytes, &live);
        let mut chain = if idle > 0 {
            self.take_dirty(idle, None, Cause::Decay)
        } else {
            ptr::null_mut()
        };
        if over > 0 {
            chain = concat(chain, self.take_dirty(over, None, Cause::Bound));
        }
        let over = self
            .dirty_bytes
            .saturating_sub(self.decay.cache_bound(None));
        if over > 0 {
            chain = concat(chain, self.take_dirty(over, None, Cause::Bound));
        }
        chain
    }

    /// Purged extents come back clean.
    ///
    /// # Safety
    /// `chain` links `Busy` extents of ours through `lru_next`.
    pub(super) unsafe fn finish_purge(&mut self, mut chain: *mut Extent) {
        let zero = !self.lazy_purge;
        // SAFETY: the caller's contract.
        unsafe {
            while !chain.is_null() {
                let next = (*chain).lru_next;
                (*chain).lru_next = ptr::null_mut();
                self.busy -= (*chain).size as u64;
                self.put_clean(chain, zero);
                chain = next;
            }
        }
    }
}
