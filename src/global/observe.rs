//! What a program asks about where its memory went: the timeline and its markers, sampled
//! profiles (now and at the peak, with Python stacks), scopes, and the HTML report. None of it is
//! on an allocation path; what allocates says so.

use super::{exit, TensorPool};

impl TensorPool {
    /// Start recording the memory timeline (clearing what was recorded). Each large-block
    /// allocation or free then records every kind's live and cached bytes, in a ring of the last
    /// `TIMELINE_CAPACITY` samples.
    pub fn start_timeline(&self) {
        self.start_timeline_every(core::time::Duration::ZERO);
    }

    /// As `start_timeline`, but at most one sample per `interval` (the first event after it
    /// elapses), so the ring covers a longer run.
    pub fn start_timeline_every(&self, interval: core::time::Duration) {
        self.init();
        crate::timeline::start(interval.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Put a named marker ("request 2", "prefill done") on the timeline at this moment, if it is
    /// recording; the chart draws it as a labelled line. The first `MARKER_NAME_MAX` bytes of
    /// the name are kept, in a ring of the last `MARKER_CAPACITY` markers. Allocates nothing.
    pub fn mark(&self, name: &str) {
        // A program's first marker may come before its first large allocation: configure now,
        // so that a timeline the options ask for is recording.
        self.init();
        crate::timeline::mark(name);
    }

    /// How often threads found the allocator's locks held, and how long they waited (spins,
    /// then yields), since the process started. A many-thread program whose large blocks miss
    /// their thread caches waits on the arena's lock: this says how much.
    pub fn lock_waits(&self) -> crate::stats::LockWaits {
        let (contended, spins, yields) = crate::sync::waits::get();
        crate::stats::LockWaits {
            contended,
            spins,
            yields,
        }
    }

    /// The profile of live memory by call site and kind, from the sampled allocations
    /// (`TENSORPOOL_PROFILE`, `PoolConfig::with_profile`; empty, with `rate` 0, when profiling
    /// is off). Resolves symbols and allocates: call it outside hot paths.
    pub fn profile(&self) -> crate::profile::Profile {
        crate::profile::snapshot()
    }

    /// Run `f` in the scope `name`, inside the calling thread's current scope: the large
    /// blocks it allocates are attributed to the scope (see `scopes`). If the scope cannot be
    /// entered (an empty name, a full table), `f` runs all the same and the refusal is counted
    /// in `Scopes::refused`.
    pub fn scope<R>(&self, name: &str, f: impl FnOnce() -> R) -> R {
        crate::scope::scope(name, f)
    }

    /// Enter the scope `name` until the guard is dropped (see `scope`).
    pub fn enter_scope(&self, name: &str) -> Result<crate::ScopeGuard, crate::ScopeError> {
        crate::ScopeGuard::enter(name)
    }

    /// Every scope entered so far with its large-block bytes, own and inclusive, live and at
    /// peak, per kind, and the bytes allocated outside every scope. Allocates: call it outside
    /// hot paths.
    pub fn scopes(&self) -> crate::Scopes {
        let held = crate::stats::held_total();
        crate::profile::unsampled(|| crate::scope::report::snapshot(held))
    }

    /// Lower every scope's peaks to its live bytes now, so that the next `scopes` reports the
    /// peaks of what runs from here (a test, a request).
    pub fn reset_scope_peaks(&self) {
        crate::scope::reset_peaks();
    }

    /// Enter the scope `name` (any bytes; the first `SCOPE_NAME_MAX` are kept) for callers
    /// that cannot hold a guard, such as a C API or a Python hook: leave it with `pop_scope`.
    /// Returns the new depth.
    pub fn push_scope(&self, name: &[u8]) -> Result<usize, crate::ScopeError> {
        crate::scope::push(name)?;
        Ok(crate::scope::depth())
    }

    /// Leave the calling thread's innermost scope; the depth left, or `None` (nothing
    /// changed) if no scope was entered.
    pub fn pop_scope(&self) -> Option<usize> {
        crate::scope::pop()
    }

    /// Share the calling thread's scopes with every thread outside all scopes (`on`), or stop:
    /// the large blocks those threads allocate (an operator's worker threads, allocating for
    /// the module the calling thread runs) go to the calling thread's current scope. One thread
    /// shares at a time; the last to call wins.
    pub fn share_scopes(&self, on: bool) {
        crate::scope::share(on);
    }

    /// The calling thread's scope depth (0: outside every scope).
    pub fn scope_depth(&self) -> usize {
        crate::scope::depth()
    }

    /// The profile of the sampled blocks that were live when the program's large live bytes
    /// were highest (within a sixteenth: a copy of the samples is kept at each new peak a
    /// sixteenth above the last), and those bytes. Empty, with 0, when profiling is off.
    /// Allocates: call it outside hot paths.
    pub fn profile_at_peak(&self) -> (crate::profile::Profile, u64) {
        let (p, live) = crate::profile::snapshot_at_peak();
        (p, live as u64)
    }

    /// Keep (`on`) or stop keeping the Python stacks of sampled allocations, in a process with
    /// a Python interpreter: a profile function the interpreter calls at every Python call and
    /// return keeps a shadow stack that the sampler reads (see `ProfileSite::python`). For
    /// every thread on Python 3.12+ (returns `Ok(true)`), else for the calling thread
    /// (`Ok(false)`). Call it from Python (the interpreter's lock held): the C API's
    /// `tensorpool_python_stacks`, `tensorpool.python_stacks()`. It replaces another profile
    /// function (cProfile's), as `sys.setprofile` does.
    pub fn python_stacks(&self, on: bool) -> Result<bool, crate::PythonStacksError> {
        crate::pystack::install(on)
    }

    /// The memory report as one self-contained HTML page: the timeline (whole run, and one
    /// chart per marked stretch), the per-kind table, and the top live call sites per kind with
    /// their stacks (profiling on). Allocates and resolves symbols: call it outside hot paths.
    pub fn report_html(&self) -> String {
        let mut comm = [0u8; 64];
        let prog = exit::program_name(&mut comm);
        crate::profile::unsampled(|| {
            let title = format!("{prog} (pid {})", crate::os::pid());
            crate::report::html(
                &title,
                &self.stats(),
                &self.timeline(),
                &self.profile(),
                &self.profile_at_peak(),
                &self.scopes(),
            )
        })
    }

    /// Write `report_html` to a file (created or truncated).
    pub fn write_html(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let html = self.report_html();
        let c = std::ffi::CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let fd = crate::os::create_file(&c).ok_or_else(std::io::Error::last_os_error)?;
        crate::os::write_fd(fd, html.as_bytes());
        crate::os::close(fd);
        Ok(())
    }

    /// Stop recording the timeline; what was recorded stays until the next start.
    pub fn stop_timeline(&self) {
        crate::timeline::stop();
    }

    /// The recorded timeline, oldest sample first (allocates: call it outside hot paths).
    pub fn timeline(&self) -> crate::timeline::Timeline {
        crate::timeline::snapshot()
    }
}
