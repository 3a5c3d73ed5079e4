//! The arena's bookkeeping of extents, under its lock: spare descriptors, the tiling of a region
//! (neighbours, merging), the release-order list of dirty extents, free runs and their trees,
//! putting an extent back dirty or clean, splitting one, and carving a range out of a run.

use super::*;

impl ArenaState {
    /// Make sure `n` spare descriptors and two spare region records exist (so that a step
    /// never fails half-way). False when metadata cannot be mapped.
    pub(super) fn reserve(&mut self, n: usize) -> bool {
        while self.spares < n {
            let e = self
                .meta
                .alloc(core::mem::size_of::<Extent>(), 64)
                .cast::<Extent>();
            if e.is_null() {
                return false;
            }
            // SAFETY: fresh, zeroed, aligned metadata memory of the descriptor's size.
            unsafe {
                e.write(Extent::EMPTY);
                (*e).next = self.spare;
            }
            self.spare = e;
            self.spares += 1;
        }
        for _ in 0..2 {
            if self.spare_regions.is_null() {
                let r = self
                    .meta
                    .alloc(core::mem::size_of::<Region>(), 8)
                    .cast::<Region>();
                if r.is_null() {
                    return false;
                }
                // SAFETY: fresh metadata memory of the record's size.
                unsafe {
                    r.write(Region {
                        zone: 0,
                        base: 0,
                        end: 0,
                        first: ptr::null_mut(),
                        last: ptr::null_mut(),
                        next: ptr::null_mut(),
                    })
                };
                self.spare_regions = r;
            } else {
                break;
            }
        }
        self.totals.meta_bytes = (self.meta.mapped + self.map_meta.mapped) as u64;
        true
    }

    /// A descriptor from the spares (`reserve` made sure there is one).
    pub(super) fn new_desc(&mut self) -> *mut Extent {
        let e = self.spare;
        debug_assert!(!e.is_null(), "descriptor reserve exhausted");
        // SAFETY: spares are unused descriptors owned by the arena.
        unsafe {
            self.spare = (*e).next;
            e.write(Extent::EMPTY);
        }
        self.spares -= 1;
        self.totals.extents += 1;
        e
    }

    pub(super) fn free_desc(&mut self, e: *mut Extent) {
        // SAFETY: `e` is off every tree, list and region; it is ours to recycle.
        unsafe {
            e.write(Extent::EMPTY);
            (*e).next = self.spare;
        }
        self.spare = e;
        self.spares += 1;
        self.totals.extents -= 1;
    }

    /// Link `n` just after `x` in address order (`n` covers what follows `x`).
    ///
    /// # Safety
    /// Both are our descriptors; `n` is on no list; `n.base == x.end()`.
    pub(super) unsafe fn link_after(&mut self, x: *mut Extent, n: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert_eq!((*n).base, (*x).end());
            let next = (*x).next;
            (*n).prev = x;
            (*n).next = next;
            (*x).next = n;
            if next.is_null() {
                (*self.region_of((*x).base)).last = n;
            } else {
                (*next).prev = n;
            }
        }
    }

    /// `keep` absorbs its next neighbour `gone`, which leaves the address list (its descriptor
    /// is recycled by the caller).
    ///
    /// # Safety
    /// `gone == keep.next`; neither is in a tree or on a list the caller has not dealt with.
    pub(super) unsafe fn absorb_next(&mut self, keep: *mut Extent, gone: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert_eq!((*keep).next, gone);
            let next = (*gone).next;
            (*keep).size += (*gone).size;
            (*keep).next = next;
            if next.is_null() {
                (*self.region_of((*keep).base)).last = keep;
            } else {
                (*next).prev = keep;
            }
        }
    }

    /// Make `e` the most recently released dirty extent.
    ///
    /// # Safety
    /// `e` is a live descriptor of a dirty extent on no release-order list; the lock is held.
    unsafe fn lru_push(&mut self, e: *mut Extent) {
        // SAFETY: `e` is a dirty extent on no list.
        unsafe {
            let l = &mut self.lru;
            (*e).lru_prev = ptr::null_mut();
            (*e).lru_next = l.head;
            if l.head.is_null() {
                l.tail = e;
            } else {
                (*l.head).lru_prev = e;
            }
            l.head = e;
        }
    }

    /// Take `e` off the release-order list.
    ///
    /// # Safety
    /// `e` is a live descriptor on this state's list; the lock is held.
    unsafe fn lru_unlink(&mut self, e: *mut Extent) {
        // SAFETY: `e` is on the list.
        unsafe {
            let l = &mut self.lru;
            let (p, n) = ((*e).lru_prev, (*e).lru_next);
            if p.is_null() {
                l.head = n;
            } else {
                (*p).lru_next = n;
            }
            if n.is_null() {
                l.tail = p;
            } else {
                (*n).lru_prev = p;
            }
            (*e).lru_prev = ptr::null_mut();
            (*e).lru_next = ptr::null_mut();
        }
    }

    /// Put `t` on the list right after `e` (towards older), with `e`'s release clock.
    ///
    /// # Safety
    /// `e` is on this state's list, `t` a live dirty descriptor on none; the lock is held.
    unsafe fn lru_insert_after(&mut self, e: *mut Extent, t: *mut Extent) {
        // SAFETY: `e` is on the list, `t` on none.
        unsafe {
            let n = (*e).lru_next;
            (*t).lru_prev = e;
            (*t).lru_next = n;
            (*e).lru_next = t;
            if n.is_null() {
                self.lru.tail = t;
            } else {
                (*n).lru_prev = t;
            }
        }
    }

    /// The least recently released dirty extent holding bytes of `attr` (any, for `None`).
    pub(super) fn oldest(&self, attr: Option<usize>) -> *mut Extent {
        // SAFETY: the tail is null or on the list.
        unsafe { Self::holding(self.lru.tail, attr) }
    }

    /// `e`, or the first extent released after it, that holds bytes of `attr` (any, for
    /// `None`); null if none does.
    ///
    /// # Safety
    /// `e` is null or on the release-order list; the lock is held.
    pub(super) unsafe fn holding(mut e: *mut Extent, attr: Option<usize>) -> *mut Extent {
        if let Some(a) = attr {
            // SAFETY: list members are our dirty extents.
            unsafe {
                while !e.is_null() && (*e).shares[a] == 0 {
                    e = (*e).lru_prev;
                }
            }
        }
        e
    }

    /// Whether `e` is a free extent (null is not).
    ///
    /// # Safety
    /// `e` is null or our descriptor.
    #[inline]
    pub(super) unsafe fn is_free(e: *mut Extent) -> bool {
        // SAFETY: the caller's contract.
        !e.is_null() && unsafe { (*e).state() }.is_free()
    }

    /// The first extent of the run holding free extent `e`.
    ///
    /// # Safety
    /// `e` is our free extent.
    unsafe fn run_head(mut e: *mut Extent) -> *mut Extent {
        // SAFETY: neighbours are our extents.
        unsafe {
            while Self::is_free((*e).prev) {
                e = (*e).prev;
            }
        }
        e
    }

    /// Take the run holding free extent `e` out of the tree (before the run changes).
    ///
    /// # Safety
    /// `e` is our free extent, its run in the tree.
    pub(super) unsafe fn detach_run(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            let h = Self::run_head(e);
            self.runs[(*h).zone as usize].remove(h);
            (*h).span = 0;
        }
    }

    /// Put the run holding `e` (if `e` is free) into the tree, its length measured.
    ///
    /// # Safety
    /// `e` is null or our extent; if free, its run is not in the tree.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn attach_run(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract; run members are our extents.
        unsafe {
            if !Self::is_free(e) {
                return;
            }
            let h = Self::run_head(e);
            let mut span = 0;
            let mut x = h;
            while Self::is_free(x) {
                span += (*x).size;
                x = (*x).next;
            }
            (*h).span = span;
            self.runs[(*h).zone as usize].insert(h);
        }
    }

    /// Shares `c` leave the dirty set.
    fn unattribute(&mut self, c: &[u64; ATTRS]) {
        for (t, &b) in self.attr_bytes.iter_mut().zip(c) {
            *t -= b;
        }
    }

    /// Add a freed extent to the dirty set as released by `attr`, coalescing with dirty
    /// neighbours (their shares add up; the merged extent is the most recently released) and
    /// joining the run of any free neighbour.
    ///
    /// # Safety
    /// `e` is our extent, not free, in no list, in its region's address list.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn put_dirty(&mut self, e: *mut Extent, attr: usize) {
        // SAFETY: the caller's contract; neighbours are our extents.
        unsafe {
            let (l, r) = ((*e).prev, (*e).next);
            if Self::is_free(l) {
                self.detach_run(l);
            }
            if Self::is_free(r) {
                self.detach_run(r);
            }
            self.clock += 1;
            (*e).set_state(State::Dirty);
            (*e).zero = false;
            (*e).released = self.clock;
            (*e).shares = [0; ATTRS];
            (*e).shares[attr] = (*e).size as u64;
            self.attr_bytes[attr] += (*e).size as u64;
            self.dirty_bytes += (*e).size as u64;
            let mut e = e;
            if !l.is_null() && (*l).state() == State::Dirty {
                self.lru_unlink(l);
                add_shares(&mut (*l).shares, &(*e).shares);
                self.absorb_next(l, e);
                self.free_desc(e);
                (*l).released = self.clock;
                e = l;
            }
            self.lru_push(e);
            if !r.is_null() && (*r).state() == State::Dirty {
                self.lru_unlink(r);
                add_shares(&mut (*e).shares, &(*r).shares);
                self.absorb_next(e, r);
                self.free_desc(r);
            }
            self.attach_run(e);
        }
    }

    /// Add an extent to the clean set, coalescing with clean neighbours and joining the run of
    /// any free neighbour.
    ///
    /// # Safety
    /// As for `put_dirty`; `zero` says whether its bytes read as zero.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn put_clean(&mut self, e: *mut Extent, zero: bool) {
        // SAFETY: the caller's contract; neighbours are our extents.
        unsafe {
            let (l, r) = ((*e).prev, (*e).next);
            if Self::is_free(l) {
                self.detach_run(l);
            }
            if Self::is_free(r) {
                self.detach_run(r);
            }
            (*e).set_state(State::Clean);
            (*e).zero = zero;
            (*e).shares = [0; ATTRS];
            self.clean_bytes += (*e).size as u64;
            let mut e = e;
            if !l.is_null() && (*l).state() == State::Clean {
                (*l).zero &= zero;
                self.absorb_next(l, e);
                self.free_desc(e);
                e = l;
            }
            if !r.is_null() && (*r).state() == State::Clean {
                (*e).zero &= (*r).zero;
                self.absorb_next(e, r);
                self.free_desc(r);
            }
            self.attach_run(e);
        }
    }

    /// Split free extent `x` at `at` (page-aligned, inside it): `x` keeps the low part, and the
    /// returned extent, of the same state, the high part (a dirty one with the shares `high`
    /// says, and `x`'s place in release order). The run is unchanged.
    ///
    /// # Safety
    /// `x` is our free extent with `x.base < at < x.end()`; a spare descriptor exists.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn split(&mut self, x: *mut Extent, at: usize, high: Prefer) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert!((*x).base < at && at < (*x).end());
            let st = (*x).state();
            let y = self.new_desc();
            (*y).base = at;
            (*y).size = (*x).end() - at;
            (*x).size = at - (*x).base;
            (*y).zero = (*x).zero;
            (*y).zone = (*x).zone;
            (*y).released = (*x).released;
            (*y).set_state(st);
            if st == State::Dirty {
                (*y).shares = (*x).take_shares((*y).size as u64, high);
                self.lru_insert_after(x, y);
            }
            self.link_after(x, y);
            y
        }
    }

    /// Take free extent `x` out of the free set: off the release-order list, its shares and
    /// bytes uncounted, `Busy`. Its run must already be out of the tree.
    ///
    /// # Safety
    /// `x` is our free extent.
    pub(super) unsafe fn unfree(&mut self, x: *mut Extent) -> [u64; ATTRS] {
        // SAFETY: the caller's contract.
        unsafe {
            let c = (*x).shares;
            if (*x).state() == State::Dirty {
                self.lru_unlink(x);
                self.unattribute(&c);
                self.dirty_bytes -= (*x).size as u64;
            } else {
                self.clean_bytes -= (*x).size as u64;
            }
            (*x).shares = [0; ATTRS];
            (*x).set_state(State::Busy);
            c
        }
    }

    /// Cut `[a, a + need)` out of the run starting at `h` and return it as one `Busy` extent,
    /// off every tree and list, with what it took: the dirty bytes by the kind that released
    /// them (`first`'s share first), the clean (fresh) bytes, and whether all of it reads as
    /// zero. What is left of the run stays free in place.
    ///
    /// # Safety
    /// `h` is the first extent of a run in the tree holding `[a, a + need)`; three spare
    /// descriptors exist.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) unsafe fn carve(
        &mut self,
        h: *mut Extent,
        a: usize,
        need: usize,
        first: usize,
    ) -> (*mut Extent, [u64; ATTRS], u64, bool) {
        // SAFETY: the caller's contract; run members are our extents.
        unsafe {
            debug_assert!((*h).base <= a && a + need <= (*h).base + (*h).span);
            self.runs[(*h).zone as usize].remove(h);
            (*h).span = 0;
            let end = a + need;
            let mut x = h;
            while (*x).end() <= a {
                x = (*x).next;
            }
            // The range takes its own kind's share of a split extent first, what stays free the
            // others' (attribution inside one dirty extent is a convention; residency is exact).
            if (*x).base < a {
                x = self.split(x, a, Prefer::Own(first));
            }
            let start = x;
            let mut taken = [0; ATTRS];
            let mut fresh = 0u64;
            let mut zero = true;
            loop {
                if (*x).end() > end {
                    self.split(x, end, Prefer::Others(first));
                }
                if (*x).state() == State::Clean {
                    fresh += (*x).size as u64;
                    zero &= (*x).zero;
                } else {
                    zero = false;
                }
                let last = (*x).end() == end;
                let c = self.unfree(x);
                add_shares(&mut taken, &c);
                if last {
                    break;
                }
                x = (*x).next;
            }
            // One extent for the whole range.
            while (*start).end() < end {
                let n = (*start).next;
                self.absorb_next(start, n);
                self.free_desc(n);
            }
            self.attach_run((*start).prev);
            self.attach_run((*start).next);
            (start, taken, fresh, zero)
        }
    }
}
