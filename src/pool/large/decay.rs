//! When cached memory goes back to the OS: decay, and the bound that follows the workload.
//!
//! **Decay.** The arena keeps freed pages resident ("dirty") so the next request reuses them
//! without faults, and returns them once they have been idle for a whole decay period. What
//! counts as idle is measured, not guessed per extent: the period is cut into `TICKS` ticks, each
//! tick records the lowest dirty byte count seen during it, and the minimum over the last
//! `TICKS` ticks is memory that stayed dirty (unused) for the whole period. That many bytes are
//! purged, least recently released first. (Per-extent ages do not work in an arena: a free that
//! coalesces into a large idle neighbour would refresh the whole extent's age, so an idle region
//! with one busy block at its edge would never decay.) jemalloc's `dirty_decay_ms` and
//! tcmalloc's release rate answer the same question with a smoothed backlog and a rate.
//!
//! **Bound.** Without a configured capacity, the memory the arena keeps cached follows the
//! workload: dirty bytes may not exceed the recent peak of live bytes plus a sixteenth of it (at
//! least `SLACK_MIN`: the holes of the layout itself), in total. (Not per kind by default: which
//! kind's share of a coalesced extent a request takes is a convention, and per-kind bounds on it
//! purged memory the next request reused, 1.7k faults a request on the tensor trace; a kind's
//! configured capacity does bound its share.) When a request would take fresh pages beyond that,
//! when `live + dirty` stays over it for the fast period, or when
//! the peak window moves on, the least recently released dirty memory is purged first. So a
//! process that once peaked keeps about what it reuses (a cycle of tensors that peaks at `P`
//! frees and reuses at most `P`), and once the peak is `EPOCHS` epochs of `EPOCH_NS` old, what it
//! cached for it goes back. A first version bounded `live + dirty` by the peak plus 1/32: on a
//! transformer's prefill, where KV caches grow towards the peak while each layer frees and
//! reuses its temporaries, it purged the temporaries every layer and tripled the faults of the
//! first request. Fragmentation that persists is decay's business: holes that stay unused for a
//! whole period go back.
//!
//! **Footprint.** With huge pages on, a request that takes fresh pages also keeps `live +
//! dirty` within the recent peak (or the live bytes with it, when that is a new peak) plus the
//! same slack, once the live bytes reach `FOOTPRINT_FROM`, by purging whole free huge pages
//! only (`ArenaState::take_huge_pages`): what does not fit the request and would stay resident
//! beside its fresh pages goes back, at one fault per 2 MiB if it is used again, and no huge
//! page is split for it. numpy's forward pass under `LD_PRELOAD` (its KV caches grow by
//! concatenation, each copy larger than the hole the last one left) took the arena from 116 to
//! 148 MiB held while its live bytes stayed within 104 MiB, every hole resident: it peaked at
//! 187 MiB (glibc 155), 162-167 MiB with this rule. It costs the tensor trace's first request
//! 556-708 faults instead of 453 (requests 2-3 unchanged) and the soak two to three times as
//! many (972 -> 1,991-2,699), where it lowers the soak's worst RSS / peak live from 1.35-1.39
//! to 1.26-1.31. With 4 KiB pages the same rule would refault 512 pages per 2 MiB it returns
//! (the soak: 18,666 faults): it does not apply there.
//!
//! Everything here is plain arithmetic on times passed in, so it is tested without a clock.

/// Ticks per decay period.
pub(crate) const TICKS: usize = 8;

/// Epochs over which the recent peak is taken, and their length.
pub(crate) const EPOCHS: usize = 16;
pub(crate) const EPOCH_NS: u64 = 1_000_000_000;

/// The least slack the bound allows above the recent peak.
pub(crate) const SLACK_MIN: u64 = 4 << 20;

/// The footprint bound holds from this many live bytes on (with the request's): below, the
/// holes it would return are a few huge pages, each a fault again when reused.
pub(crate) const FOOTPRINT_FROM: u64 = 32 << 20;

/// Decay time meaning "never decay".
pub(crate) const NEVER: i64 = -1;

/// The decay time used when none is configured (ms). Measured: see README ("Returning memory").
pub(crate) use crate::options::DEFAULT_DECAY_MS as DEFAULT_MS;

/// The lowest value a quantity took over a sliding period of `TICKS` ticks: what stayed in
/// place the whole period.
struct Window {
    tick_ns: u64,
    /// When the current tick ends (0: not started).
    tick_end: u64,
    /// The lowest value of each of the last `TICKS` ticks (0 until observed, so nothing counts
    /// before a whole period has been seen).
    ring: [u64; TICKS],
    pos: usize,
    /// The lowest value in the current tick.
    cur_min: u64,
}

impl Window {
    const fn new(tick_ns: u64) -> Self {
        Self {
            tick_ns,
            tick_end: 0,
            ring: [0; TICKS],
            pos: 0,
            cur_min: 0,
        }
    }

    #[inline]
    fn note(&mut self, v: u64) {
        self.cur_min = self.cur_min.min(v);
    }

    /// Move to `now`, where the value is `v`; the minimum over the last whole period once a
    /// tick has ended (0 otherwise).
    #[link_section = ".text.hot.tensorpool"]
    fn advance(&mut self, now: u64, v: u64) -> u64 {
        if self.tick_end == 0 {
            self.tick_end = now + self.tick_ns;
            self.cur_min = v;
            return 0;
        }
        if now < self.tick_end {
            return 0;
        }
        let done = (now - self.tick_end) / self.tick_ns + 1;
        for i in 0..done.min(TICKS as u64) {
            // The tick just ended saw `cur_min`; any later one saw no change, so `v`. After
            // more than a whole period, the tick that saw `cur_min` is outside the window.
            self.ring[self.pos] = if i == 0 && done <= TICKS as u64 {
                self.cur_min
            } else {
                v
            };
            self.pos = (self.pos + 1) % TICKS;
        }
        self.cur_min = v;
        self.tick_end += done * self.tick_ns;
        self.ring.iter().copied().min().unwrap_or(0).min(v)
    }

    /// `bytes` of the quantity went away (purged).
    fn subtract(&mut self, bytes: u64) {
        for r in &mut self.ring {
            *r = r.saturating_sub(bytes);
        }
        self.cur_min = self.cur_min.saturating_sub(bytes);
    }
}

/// The fast tier's period, at most: memory in excess of the bound that stays so this long goes
/// back.
pub(crate) const FAST_MS: i64 = 1000;

pub(crate) struct Decay {
    /// Decay time in milliseconds: `NEVER`, 0 (purge at every free) or positive.
    ms: i64,
    /// Dirty bytes over the decay period.
    slow: Window,
    /// Dirty bytes in excess of the bound (`live + dirty` over it) over `FAST_MS`.
    fast: Window,
    epoch_end: u64,
    /// Per epoch, the highest live count of all kinds together and of each (index `NUM_KINDS`
    /// is the total).
    peaks: [[u64; KINDS1]; EPOCHS],
    ppos: usize,
    /// Highest live counts in the current epoch.
    cur_peak: [u64; KINDS1],
    /// The maximum of `peaks` per column, kept as the epochs move (every request asks for the
    /// bound; folding sixteen epochs each time was a sixth of a large allocation's instructions).
    ring_peak: [u64; KINDS1],
}

/// The kinds, and the total.
const KINDS1: usize = crate::kind::NUM_KINDS + 1;
const TOTAL: usize = crate::kind::NUM_KINDS;

impl Decay {
    pub(crate) const fn new(ms: i64) -> Self {
        Self {
            ms,
            slow: Window::new(tick_ns(ms)),
            fast: Window::new(tick_ns(fast_ms(ms))),
            ..Self::zeroed()
        }
    }

    /// All zero bytes: the arena's static state starts so, and `ArenaState::ready` puts
    /// `new`'s value in its place before any use.
    pub(crate) const fn zeroed() -> Self {
        Self {
            ms: 0,
            slow: Window::new(0),
            fast: Window::new(0),
            epoch_end: 0,
            peaks: [[0; KINDS1]; EPOCHS],
            ppos: 0,
            cur_peak: [0; KINDS1],
            ring_peak: [0; KINDS1],
        }
    }

    /// The decay time in force.
    pub(crate) fn ms(&self) -> i64 {
        self.ms
    }

    /// Change the decay time; the history of idle memory starts again.
    pub(crate) fn set_ms(&mut self, ms: i64) {
        self.ms = ms;
        self.slow = Window::new(tick_ns(ms));
        self.fast = Window::new(tick_ns(fast_ms(ms)));
    }

    /// Whether frees go back to the OS at once.
    pub(crate) fn immediate(&self) -> bool {
        self.ms == 0
    }

    /// When the next decay step is due (`u64::MAX` when decay never runs).
    pub(crate) fn due_at(&self) -> u64 {
        if self.ms <= 0 {
            u64::MAX
        } else {
            self.slow.tick_end.min(self.fast.tick_end)
        }
    }

    /// Record the dirty and live bytes after a change (each tier keeps its minimum).
    #[inline]
    pub(crate) fn note(&mut self, dirty: u64, live: u64) {
        self.slow.note(dirty);
        self.fast.note(self.excess(dirty, live));
    }

    /// Record the live counts after a change that raised them: all kinds', and `kind`'s
    /// (`None` for memory of no kind, segments).
    #[inline]
    pub(crate) fn note_live(&mut self, live: u64, kind: Option<(usize, u64)>) {
        self.cur_peak[TOTAL] = self.cur_peak[TOTAL].max(live);
        if let Some((k, l)) = kind {
            self.cur_peak[k] = self.cur_peak[k].max(l);
        }
    }

    /// How far `live + dirty` is over the bound.
    fn excess(&self, dirty: u64, live: u64) -> u64 {
        (live + dirty).saturating_sub(self.cache_bound(None))
    }

    /// Move the clocks to `now` with `dirty` bytes and the live counts now (`live[NUM_KINDS]` is
    /// the total). Returns the dirty bytes that stayed unused through the whole last decay
    /// period, and the bytes that stayed over the bound through the whole fast period (to
    /// purge; call `purged` after).
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn advance(&mut self, now: u64, dirty: u64, live: &[u64; KINDS1]) -> (u64, u64) {
        self.advance_epochs(now, live);
        if self.ms <= 0 {
            return (0, 0);
        }
        let idle = self.slow.advance(now, dirty);
        let over = self.fast.advance(now, self.excess(dirty, live[TOTAL]));
        (idle, over)
    }

    /// `bytes` of dirty memory were purged: they no longer count as idle, nor over the bound.
    pub(crate) fn purged(&mut self, bytes: u64) {
        self.slow.subtract(bytes);
        self.fast.subtract(bytes);
    }

    #[link_section = ".text.hot.tensorpool"]
    fn advance_epochs(&mut self, now: u64, live: &[u64; KINDS1]) {
        if self.epoch_end == 0 {
            self.epoch_end = now + EPOCH_NS;
            return;
        }
        if now < self.epoch_end {
            return;
        }
        let done = (now - self.epoch_end) / EPOCH_NS + 1;
        for i in 0..done.min(EPOCHS as u64) {
            self.peaks[self.ppos] = if i == 0 && done <= EPOCHS as u64 {
                self.cur_peak
            } else {
                *live
            };
            self.ppos = (self.ppos + 1) % EPOCHS;
        }
        self.cur_peak = *live;
        self.epoch_end += done * EPOCH_NS;
        for (i, m) in self.ring_peak.iter_mut().enumerate() {
            *m = self.peaks.iter().map(|p| p[i]).max().unwrap_or(0);
        }
    }

    /// The highest live count over the recent epochs: of kind `k`, or of all (`None`).
    pub(crate) fn peak(&self, k: Option<usize>) -> u64 {
        let i = k.unwrap_or(TOTAL);
        debug_assert_eq!(
            self.ring_peak[i],
            self.peaks.iter().map(|p| p[i]).max().unwrap_or(0)
        );
        self.ring_peak[i].max(self.cur_peak[i])
    }

    /// The most dirty bytes the arena keeps (of kind `k`'s share, or in all), by the bound:
    /// the recent peak plus a slack for the layout's own holes (a sixteenth, at least
    /// `SLACK_MIN`).
    pub(crate) fn cache_bound(&self, k: Option<usize>) -> u64 {
        with_slack(self.peak(k))
    }

    /// The most `live + dirty` a request that takes fresh pages leaves, `live_after` being the
    /// live bytes with it: the recent peak or `live_after`, whichever is higher, plus the
    /// bound's slack (see "Footprint").
    pub(crate) fn footprint_bound(&self, live_after: u64) -> u64 {
        if live_after < FOOTPRINT_FROM {
            return u64::MAX;
        }
        with_slack(self.peak(None).max(live_after))
    }
}

/// `peak` plus the bound's slack: a sixteenth of it, at least `SLACK_MIN`.
fn with_slack(peak: u64) -> u64 {
    peak + (peak / 16).max(SLACK_MIN)
}

/// The fast tier's period for a decay time: `FAST_MS`, or the decay time if shorter.
const fn fast_ms(ms: i64) -> i64 {
    if ms < FAST_MS {
        ms
    } else {
        FAST_MS
    }
}

const fn tick_ns(ms: i64) -> u64 {
    if ms <= 0 {
        u64::MAX
    } else {
        let ns = (ms as u64).saturating_mul(1_000_000) / TICKS as u64;
        if ns == 0 {
            1
        } else {
            ns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn idle_memory_decays_after_one_period_and_busy_memory_does_not() {
        let z = [0; KINDS1];
        let mut d = Decay::new(800);
        let t0 = 5_000 * MS;
        assert_eq!(d.advance(t0, 0, &z).0, 0);
        // 100 MiB freed and left alone: nothing before a whole period, all of it after.
        let dirty = 100u64 << 20;
        assert_eq!(d.advance(t0 + 100 * MS, dirty, &z).0, 0);
        assert_eq!(d.advance(t0 + 700 * MS, dirty, &z).0, 0);
        let (idle, _) = d.advance(t0 + 1_000 * MS, dirty, &z);
        assert_eq!(idle, dirty, "idle for a whole period");
        d.purged(idle);
        assert_eq!(d.advance(t0 + 1_200 * MS, 0, &z).0, 0);

        // Memory reused within every tick never counts as idle.
        let mut d = Decay::new(800);
        d.advance(t0, 0, &z);
        let mut t = t0;
        for _ in 0..100 {
            t += 50 * MS;
            d.note(0, dirty); // reused: the dirty count touched zero in this tick
            assert_eq!(d.advance(t, dirty, &z).0, 0);
        }
    }

    #[test]
    fn after_a_long_quiet_gap_everything_idle_decays_at_the_next_call() {
        let z = [0; KINDS1];
        let mut d = Decay::new(200);
        let t0 = 5_000 * MS;
        d.advance(t0, 0, &z);
        // Busy until the last moment: the dirty count was zero during the current tick.
        d.note(0, 0);
        let dirty = 192u64 << 20;
        assert_eq!(d.advance(t0 + 10 * MS, dirty, &z).0, 0);
        // Nothing for a second (five periods), then one call.
        assert_eq!(d.advance(t0 + 1_010 * MS, dirty, &z).0, dirty);
    }

    #[test]
    fn memory_over_the_bound_goes_back_after_the_fast_period_only() {
        let mut d = Decay::new(10_000);
        let t0 = 5_000 * MS;
        let mut live = [0; KINDS1];
        d.advance(t0, 0, &live);
        // A peak of 100 MiB, then 100 MiB live and 60 MiB dirty: 60 - 16 (the slack, at least
        // `SLACK_MIN`, here a sixteenth... of 160) over the bound.
        let mib = 1u64 << 20;
        live[TOTAL] = 100 * mib;
        d.note_live(100 * mib, None);
        let dirty = 60 * mib;
        d.note(dirty, 100 * mib);
        let over = dirty + 100 * mib - d.cache_bound(None);
        assert_eq!(d.advance(t0 + 100 * MS, dirty, &live), (0, 0));
        // Still over after a whole fast period: that much goes, none of the slow tier yet.
        assert_eq!(d.advance(t0 + 1_400 * MS, dirty, &live), (0, over));
        // An excess that dipped to zero during the period does not go.
        let mut e = Decay::new(10_000);
        e.advance(t0, 0, &live);
        e.note_live(100 * mib, None);
        for i in 1..30 {
            e.note(0, 100 * mib);
            assert_eq!(e.advance(t0 + i * 100 * MS, dirty, &live).1, 0);
        }
    }

    #[test]
    fn never_and_immediate_do_no_window_work() {
        for ms in [NEVER, 0] {
            let mut d = Decay::new(ms);
            for i in 1..100 {
                assert_eq!(d.advance(i * 1_000 * MS, 1 << 30, &[0; KINDS1]), (0, 0));
            }
            assert_eq!(d.due_at(), u64::MAX);
        }
        assert!(Decay::new(0).immediate());
    }

    #[test]
    fn the_bound_follows_the_recent_peak() {
        let mut d = Decay::new(NEVER);
        let t0 = 10 * EPOCH_NS;
        let mut live = [0; KINDS1];
        d.advance(t0, 0, &live);
        d.note_live(1 << 30, Some((2, 1 << 29)));
        assert_eq!(d.peak(None), 1 << 30);
        assert_eq!(d.cache_bound(None), (1 << 30) + (1 << 26));
        assert_eq!(d.cache_bound(Some(2)), (1 << 29) + (1 << 25));
        assert_eq!(
            d.cache_bound(Some(3)),
            SLACK_MIN,
            "small peaks keep the minimum"
        );
        // After `EPOCHS` epochs at a lower level, the old peak is forgotten.
        live[TOTAL] = 64 << 20;
        live[2] = 32 << 20;
        let mut t = t0;
        for _ in 0..=EPOCHS {
            t += EPOCH_NS;
            d.advance(t, 0, &live);
        }
        assert_eq!(d.peak(None), 64 << 20);
        assert_eq!(d.cache_bound(Some(2)), (32 << 20) + SLACK_MIN);
    }
}
