//! The expensive check: a walk over every region, extent, tree and list that checks the
//! invariants in the module docs (`--features check`, tests and loom models).

use super::*;

/// What a census of the arena found (see `ArenaState::census`).
#[cfg(any(test, loom, feature = "check"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Regions and the extents tiling them.
    pub regions: usize,
    /// Free runs (maximal sequences of free neighbours).
    pub runs: usize,
    /// Extents by state.
    pub live: usize,
    /// See `live`.
    pub segments: usize,
    /// See `live`.
    pub dirty: usize,
    /// See `live`.
    pub clean: usize,
    /// Bytes of live blocks (hot ones included) and segments.
    pub live_bytes: u64,
    /// Bytes of dirty and clean extents.
    pub dirty_bytes: u64,
    /// See `dirty_bytes`.
    pub clean_bytes: u64,
    /// Bytes mapped.
    pub mapped_bytes: u64,
}

#[cfg(any(test, loom, feature = "check"))]
impl ArenaState {
    /// Check every invariant in the module docs and return what the arena holds. Panics (a
    /// test's or model's assertion) on a violation; call with nothing `Busy`.
    pub(crate) fn census(&self, map: &PageMap) -> Census {
        let mut c = Census::default();
        let mut shares = [0u64; ATTRS];
        let mut lru_count = 0usize;
        // SAFETY: regions and extents are ours; the caller holds the lock.
        unsafe {
            let mut r = self.regions;
            while !r.is_null() {
                c.regions += 1;
                c.mapped_bytes += ((*r).end - (*r).base) as u64;
                let mut e = (*r).first;
                let mut prev: *mut Extent = ptr::null_mut();
                let mut at = (*r).base;
                // The run being walked: its first extent and the bytes seen so far.
                let mut run: (*mut Extent, usize) = (ptr::null_mut(), 0);
                while !e.is_null() {
                    assert_eq!((*e).zone, (*r).zone, "an extent outside its region's zone");
                    assert_eq!((*e).prev, prev, "broken address back link");
                    assert_eq!((*e).base, at, "extents do not tile the region");
                    assert!((*e).size > 0 && (*e).size % PAGE == 0);
                    let st = (*e).state();
                    if !prev.is_null() && st.is_free() {
                        assert_ne!((*prev).state(), st, "two free neighbours of one state");
                    }
                    if st.is_free() {
                        if run.0.is_null() {
                            run = (e, 0);
                            c.runs += 1;
                        } else {
                            assert_eq!((*e).span, 0, "a run's later extent has a span");
                        }
                        run.1 += (*e).size;
                    }
                    if !run.0.is_null() && (!st.is_free() || (*e).next.is_null()) {
                        assert_eq!((*run.0).span, run.1, "a run's span is not its length");
                        run = (ptr::null_mut(), 0);
                    }
                    match st {
                        State::Live | State::Hot => {
                            c.live += 1;
                            c.live_bytes += (*e).size as u64;
                            let start = (*e).start.load(Relaxed);
                            assert!(start >= (*e).base && start < (*e).base + PAGE);
                            assert_eq!(map.get(start).cast::<Extent>(), e, "page map entry");
                        }
                        State::Segment => {
                            c.segments += 1;
                            c.live_bytes += (*e).size as u64;
                            assert!(pagemap::is_small((*e).base as *const u8));
                        }
                        State::Dirty => {
                            c.dirty += 1;
                            c.dirty_bytes += (*e).size as u64;
                            assert_eq!((*e).shares.iter().sum::<u64>(), (*e).size as u64);
                            add_shares(&mut shares, &(*e).shares);
                        }
                        State::Clean => {
                            c.clean += 1;
                            c.clean_bytes += (*e).size as u64;
                        }
                        State::Busy | State::Unused => panic!("census with an extent {st:?}"),
                    }
                    at = (*e).end();
                    prev = e;
                    e = (*e).next;
                }
                assert_eq!(at, (*r).end, "extents stop short of the region's end");
                assert_eq!(prev, (*r).last, "region's last extent");
                r = (*r).next;
            }
            let mut e = self.lru.head;
            let mut newer = u64::MAX;
            let mut p: *mut Extent = ptr::null_mut();
            while !e.is_null() {
                assert_eq!((*e).lru_prev, p, "broken release-order back link");
                assert_eq!((*e).state(), State::Dirty, "a non-dirty extent on the list");
                assert!((*e).released <= newer, "release order broken");
                newer = (*e).released;
                lru_count += 1;
                p = e;
                e = (*e).lru_next;
            }
            assert_eq!(p, self.lru.tail, "list tail");
        }
        for t in &self.runs {
            t.check();
        }
        assert_eq!(lru_count, c.dirty, "dirty extents off the list");
        let (count, bytes) = self
            .runs
            .iter()
            .fold((0, 0), |(c, b), t| (c + t.count, b + t.bytes));
        assert_eq!(count, c.runs, "runs out of the trees");
        assert_eq!(bytes as u64, c.dirty_bytes + c.clean_bytes, "run spans");
        assert_eq!(
            (self.dirty_bytes, self.clean_bytes),
            (c.dirty_bytes, c.clean_bytes)
        );
        assert_eq!(shares, self.attr_bytes, "attribution sums");
        assert_eq!(self.busy, 0);
        assert_eq!(c.live_bytes, self.live, "live bytes");
        assert_eq!(c.mapped_bytes, self.totals.mapped_bytes, "mapped bytes");
        assert_eq!(
            c.live_bytes + c.dirty_bytes + c.clean_bytes,
            c.mapped_bytes,
            "live + dirty + clean != mapped"
        );
        assert_eq!(c.regions as u64, self.totals.regions);
        let kinds_live: u64 = self.kinds.iter().map(|k| k.live_bytes).sum();
        assert_eq!(
            kinds_live + self.totals.segment_bytes,
            self.live,
            "kinds' live bytes"
        );
        c
    }
}

#[cfg(any(test, loom, feature = "check"))]
impl Arena {
    /// See `ArenaState::census`.
    pub(crate) fn census(&self) -> Census {
        self.with(|s| s.census(&self.map))
    }
}
