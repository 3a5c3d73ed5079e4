//! `TENSORPOOL_CHECK=full`: a debug allocator that catches what the default checks cannot
//! cheaply. Every allocation, small or large, then comes from here instead of the pools:
//!
//! - **Canaries**: a block is followed by `CANARY_MAX` bytes (at least `CANARY_MIN`) of
//!   `CANARY`, checked when it is freed: a write past its end (a 1-byte overflow) is reported.
//! - **Quarantine**: a freed block is filled with `FREED` and held back from reuse (the last
//!   `QUARANTINE_BLOCKS` frees, at most `QUARANTINE_BYTES`); when it leaves the quarantine, to be
//!   reused, the fill is checked: a write after free is reported.
//! - **Exact frees**: a free (or realloc, or size query) of an address that is not the start of
//!   a live block is reported with what the block there is, as is a second free.
//! - **A census at exit**: every live block's canary and every quarantined block's fill.
//!
//! A report is one line on stderr, then `abort()`. The mode is read from the environment at the
//! process's first allocation slow path and never changes; off, the pools' code calls here only
//! from paths that are already slow (`heap::alloc_slow`, a large allocation, a free that the
//! pools do not recognise), so the fast paths pay nothing for it. Blocks here are not in the
//! pools' statistics.
//!
//! Memory comes straight from the OS (`os::map`) in chunks of `CHUNK` bytes, carved by a bump
//! pointer into slots of a power of two bytes, reused per size; a slot larger than a chunk
//! gets a mapping of its own, unmapped when it leaves the quarantine. Per slot:
//! `slot + offset == user`, `offset >= HEADER`, `offset % align == 0`, and the word before the
//! user address holds `slot ^ BACK_KEY`, so a free finds its header from the address.

use crate::sync::{shared_static, AtomicUsize, Ordering, SpinLock};
use core::fmt::Write;
use core::ptr;

/// Mode: not read yet, default checks, full checks.
const UNKNOWN: usize = 0;
const DEFAULT: usize = 1;
const FULL: usize = 2;

shared_static! {
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static MODE: AtomicUsize = AtomicUsize::new(UNKNOWN);
}

shared_static! {
    static STATE: SpinLock<State> = SpinLock::new(State::new());
}

const CHUNK: usize = 64 << 20;
const MAX_MAPS: usize = 1024;
const HEADER: usize = 64;
const CANARY_MIN: usize = 16;
const CANARY_MAX: usize = 64;
const CANARY: u8 = 0xcb;
const FREED: u8 = 0xdf;
/// The most bytes of a freed block filled (and checked): a larger block's first bytes only.
const FILL_MAX: usize = 1 << 20;
const QUARANTINE_BLOCKS: usize = 1024;
const QUARANTINE_BYTES: usize = 64 << 20;
const SLOT_MAGIC: u64 = 0x7470_636b_736c_6f74;
const GAP_MAGIC: u64 = 0x7470_636b_6761_7021;
const BACK_KEY: usize = 0x5a3c_96e1_0f2d_b487;
const CLASSES: usize = 48;

const LIVE: u32 = 1;
const QUARANTINED: u32 = 2;
const FREE: u32 = 3;

/// A slot's header, at its first byte (`HEADER` bytes; the last word is the back pointer of a
/// block at offset `HEADER`).
#[repr(C)]
struct Slot {
    magic: u64,
    /// Slot bytes (a power of two in a chunk; a page multiple for a mapping of its own).
    len: usize,
    /// The bytes asked for.
    size: usize,
    offset: u32,
    state: u32,
    kind: u32,
    /// Whether the slot is a mapping of its own.
    own_map: u32,
    next: *mut Slot,
}

const _: () = assert!(core::mem::size_of::<Slot>() <= HEADER - 8);

struct State {
    /// Mappings: (base, len); len 0 for one unmapped since.
    maps: [(usize, usize); MAX_MAPS],
    nmaps: usize,
    bump: usize,
    bump_end: usize,
    free: [*mut Slot; CLASSES],
    ring: [*mut Slot; QUARANTINE_BLOCKS],
    ring_head: usize,
    ring_len: usize,
    ring_bytes: usize,
    live_blocks: usize,
    live_bytes: usize,
}

// SAFETY: the raw pointers are slots in mappings this module owns, touched only under the lock.
unsafe impl Send for State {}

impl State {
    const fn new() -> Self {
        Self {
            maps: [(0, 0); MAX_MAPS],
            nmaps: 0,
            bump: 0,
            bump_end: 0,
            free: [ptr::null_mut(); CLASSES],
            ring: [ptr::null_mut(); QUARANTINE_BLOCKS],
            ring_head: 0,
            ring_len: 0,
            ring_bytes: 0,
            live_blocks: 0,
            live_bytes: 0,
        }
    }

    /// Record a mapping, in the slot of one unmapped since if there is one.
    fn add_map(&mut self, base: usize, len: usize) -> bool {
        if let Some(m) = self.maps[..self.nmaps].iter_mut().find(|m| m.1 == 0) {
            *m = (base, len);
            return true;
        }
        if self.nmaps == MAX_MAPS {
            return false;
        }
        self.maps[self.nmaps] = (base, len);
        self.nmaps += 1;
        true
    }

    fn map_of(&self, p: usize) -> Option<(usize, usize)> {
        self.maps[..self.nmaps]
            .iter()
            .copied()
            .find(|&(b, l)| l > 0 && (b..b + l).contains(&p))
    }
}

/// Whether full checks are on (reads `TENSORPOOL_CHECK` at the first call).
#[inline]
pub(crate) fn full() -> bool {
    match MODE.load(Ordering::Relaxed) {
        UNKNOWN => read_mode(),
        m => m == FULL,
    }
}

#[cold]
#[link_section = ".text.hot.tensorpool"]
fn read_mode() -> bool {
    let m = match crate::env::read_var(c"TENSORPOOL_CHECK", parse_mode, "default or full", || {
        crate::env::Kept::Text("default")
    }) {
        Some(true) => FULL,
        _ => DEFAULT,
    };
    if MODE
        .compare_exchange(UNKNOWN, m, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
        && m == FULL
    {
        crate::os::at_exit(census_at_exit);
    }
    MODE.load(Ordering::Relaxed) == FULL
}

fn parse_mode(s: &[u8]) -> Option<bool> {
    let s = crate::text::trim(s);
    if s.eq_ignore_ascii_case(b"full") {
        Some(true)
    } else if s.eq_ignore_ascii_case(b"default") || s.eq_ignore_ascii_case(b"on") {
        Some(false)
    } else {
        None
    }
}

/// A block of `size` bytes aligned to `align` (a power of two), of kind `kind`; null if the OS
/// refuses memory.
pub(crate) fn alloc(size: usize, align: usize, kind: usize) -> *mut u8 {
    let offset = HEADER.max(align);
    let Some(need) = offset
        .checked_add(size)
        .and_then(|n| n.checked_add(CANARY_MIN))
    else {
        return ptr::null_mut();
    };
    STATE.with(|s| {
        // SAFETY: slots are carved from mappings this module owns, under the lock; the canary
        // bytes lie in the block's slot, after the block.
        unsafe {
            let slot = take_slot(s, need, offset);
            if slot.is_null() {
                return ptr::null_mut();
            }
            (*slot).magic = SLOT_MAGIC;
            (*slot).size = size;
            (*slot).offset = offset as u32;
            (*slot).state = LIVE;
            (*slot).kind = kind as u32;
            (*slot).next = ptr::null_mut();
            let user = slot.cast::<u8>().add(offset);
            user.cast::<usize>().sub(1).write(slot as usize ^ BACK_KEY);
            ptr::write_bytes(user.add(size), CANARY, canary_len(slot));
            s.live_blocks += 1;
            s.live_bytes += size;
            user
        }
    })
}

/// A slot of at least `need` bytes, aligned to `offset` (a power of two: the block's alignment,
/// at least `HEADER`), so that the block at `slot + offset` is aligned too.
///
/// # Safety
/// Under the lock.
unsafe fn take_slot(s: &mut State, need: usize, offset: usize) -> *mut Slot {
    let align = offset;
    if need > CHUNK / 4 {
        let Some(len) = need.checked_next_multiple_of(crate::os::PAGE) else {
            return ptr::null_mut();
        };
        let base = if offset > crate::os::PAGE {
            crate::os::map_aligned(len, offset.next_power_of_two())
        } else {
            crate::os::map(len)
        };
        if base.is_null() {
            return ptr::null_mut();
        }
        if !s.add_map(base as usize, len) {
            crate::os::unmap(base, len);
            return ptr::null_mut();
        }
        let slot = base.cast::<Slot>();
        // SAFETY: a fresh mapping of `len >= HEADER` bytes.
        unsafe {
            (*slot).len = len;
            (*slot).own_map = 1;
        }
        return slot;
    }
    let class = need.next_power_of_two().max(128).trailing_zeros() as usize;
    let len = 1usize << class;
    // SAFETY: free-list slots are slots of ours, not in use.
    unsafe {
        let mut prev: *mut *mut Slot = &mut s.free[class];
        while !(*prev).is_null() {
            let slot = *prev;
            if (slot as usize + offset) % align == 0 {
                *prev = (*slot).next;
                return slot;
            }
            prev = &mut (*slot).next;
        }
    }
    let start = (s.bump + align - 1) & !(align - 1);
    if s.bump == 0 || start + len > s.bump_end {
        let base = crate::os::map_aligned(CHUNK, CHUNK.min(2 << 20));
        if base.is_null() || !s.add_map(base as usize, CHUNK) {
            if !base.is_null() {
                crate::os::unmap(base, CHUNK);
            }
            return ptr::null_mut();
        }
        s.bump = base as usize;
        s.bump_end = base as usize + CHUNK;
        // SAFETY: as for the recursive call's own contract: under the lock.
        return unsafe { take_slot(s, need, offset) };
    }
    if start > s.bump {
        // A gap header keeps the chunk walkable (`walk`): gaps are 64-byte multiples.
        let gap = s.bump as *mut Slot;
        // SAFETY: the gap lies in the chunk, unused.
        unsafe {
            (*gap).magic = GAP_MAGIC;
            (*gap).len = start - s.bump;
        }
    }
    s.bump = start + len;
    let slot = start as *mut Slot;
    // SAFETY: a fresh slot in the chunk.
    unsafe {
        (*slot).len = len;
        (*slot).own_map = 0;
    }
    slot
}

/// Canary bytes after a slot's block.
///
/// # Safety
/// `slot` is a slot header of ours.
unsafe fn canary_len(slot: *mut Slot) -> usize {
    // SAFETY: the caller's contract.
    unsafe { ((*slot).len - (*slot).offset as usize - (*slot).size).min(CANARY_MAX) }
}

/// Whether `p` lies in memory of this module (false unless full checks are on).
pub(crate) fn owns(p: *mut u8) -> bool {
    full() && STATE.with(|s| s.map_of(p as usize).is_some())
}

/// The live block at `p`, or a report and `abort()` naming `what` went wrong.
///
/// # Safety
/// Under the lock; `p` is in one of the module's mappings.
unsafe fn live_slot(s: &State, p: *mut u8, what: &str) -> *mut Slot {
    let a = p as usize;
    let (base, len) = s.map_of(a).unwrap_or((0, 0));
    // SAFETY: every address read lies in a mapping of ours (checked before each read).
    unsafe {
        if a % 16 == 0 && a >= base + HEADER {
            let slot = (p.cast::<usize>().sub(1).read() ^ BACK_KEY) as *mut Slot;
            let sa = slot as usize;
            if sa >= base
                && sa + HEADER <= a
                && sa < base + len
                && (*slot).magic == SLOT_MAGIC
                && sa + (*slot).offset as usize == a
            {
                match (*slot).state {
                    LIVE => return slot,
                    QUARANTINED | FREE => crate::os::fatal(format_args!(
                        "{what}({p:p}): double free of a {}-byte block (kind {}), freed before",
                        (*slot).size,
                        kind_name((*slot).kind as usize)
                    )),
                    _ => {}
                }
            }
        }
        match walk(base, len, a) {
            Some(slot) if (*slot).state == LIVE => {
                let user = slot as usize + (*slot).offset as usize;
                if a >= user && a < user + (*slot).size {
                    crate::os::fatal(format_args!(
                        "{what}({p:p}): not the start of a block: {} bytes into the {}-byte \
                         block at {user:#x} (kind {})",
                        a - user,
                        (*slot).size,
                        kind_name((*slot).kind as usize)
                    ))
                }
                crate::os::fatal(format_args!(
                    "{what}({p:p}): not a block: {} bytes from the {}-byte block at {user:#x}, in \
                     its header or canary",
                    a as isize - user as isize,
                    (*slot).size
                ))
            }
            _ => crate::os::fatal(format_args!(
                "{what}({p:p}): not a live block (in freed or unused memory of the checking \
                 allocator)"
            )),
        }
    }
}

/// The slot of a chunk holding `a`, by walking its headers from the chunk's start (reports only).
///
/// # Safety
/// Under the lock; `(base, len)` is a mapping of ours.
unsafe fn walk(base: usize, len: usize, a: usize) -> Option<*mut Slot> {
    let mut x = base;
    while x < base + len {
        let slot = x as *mut Slot;
        // SAFETY: `x` starts a slot or a gap of the chunk, or the unused tail (zeros).
        let (magic, l) = unsafe { ((*slot).magic, (*slot).len) };
        if (magic != SLOT_MAGIC && magic != GAP_MAGIC) || l == 0 {
            return None;
        }
        if a < x + l {
            return (magic == SLOT_MAGIC).then_some(slot);
        }
        x += l;
    }
    None
}

/// Free the block at `p` (`what`: the call, for reports): its canary is checked, and it goes to
/// the quarantine, filled; the block leaving the quarantine has its fill checked.
///
/// # Safety
/// `owns(p)`.
pub(crate) unsafe fn free(p: *mut u8, what: &str) {
    STATE.with(|s| {
        // SAFETY: under the lock; slots are ours.
        unsafe {
            let slot = live_slot(s, p, what);
            check_canary(slot, what);
            let size = (*slot).size;
            (*slot).state = QUARANTINED;
            ptr::write_bytes(p, FREED, size.min(FILL_MAX));
            s.live_blocks -= 1;
            s.live_bytes -= size;
            if s.ring_len == QUARANTINE_BLOCKS {
                evict(s);
            }
            let i = (s.ring_head + s.ring_len) % QUARANTINE_BLOCKS;
            s.ring[i] = slot;
            s.ring_len += 1;
            s.ring_bytes += (*slot).len;
            while s.ring_bytes > QUARANTINE_BYTES && s.ring_len > 1 {
                evict(s);
            }
        }
    });
}

/// Take the oldest block out of the quarantine, check its fill and make its slot reusable.
///
/// # Safety
/// Under the lock, with a non-empty quarantine.
unsafe fn evict(s: &mut State) {
    let slot = s.ring[s.ring_head];
    s.ring_head = (s.ring_head + 1) % QUARANTINE_BLOCKS;
    s.ring_len -= 1;
    // SAFETY: quarantined slots are ours.
    unsafe {
        s.ring_bytes -= (*slot).len;
        check_fill(slot);
        (*slot).state = FREE;
        if (*slot).own_map != 0 {
            let (base, len) = (slot as usize, (*slot).len);
            if let Some(m) = s.maps[..s.nmaps]
                .iter_mut()
                .find(|m| m.0 == base && m.1 > 0)
            {
                m.1 = 0;
            }
            crate::os::unmap(base as *mut u8, len);
        } else {
            let class = (*slot).len.trailing_zeros() as usize;
            (*slot).next = s.free[class];
            s.free[class] = slot;
        }
    }
}

/// # Safety
/// `slot` is a live or quarantined slot of ours.
unsafe fn check_canary(slot: *mut Slot, what: &str) {
    // SAFETY: the canary lies in the slot.
    unsafe {
        let user = slot.cast::<u8>().add((*slot).offset as usize);
        let end = user.add((*slot).size);
        for i in 0..canary_len(slot) {
            let b = end.add(i).read();
            if b != CANARY {
                crate::os::fatal(format_args!(
                    "{what}({user:p}): buffer overflow: the {}-byte block (kind {}) was written \
                     past its end, at +{i} (byte {b:#04x} at {:p})",
                    (*slot).size,
                    kind_name((*slot).kind as usize),
                    end.add(i)
                ));
            }
        }
    }
}

/// # Safety
/// `slot` is a quarantined slot of ours.
unsafe fn check_fill(slot: *mut Slot) {
    // SAFETY: the fill lies in the block.
    unsafe {
        let user = slot.cast::<u8>().add((*slot).offset as usize);
        let n = (*slot).size.min(FILL_MAX);
        if let Some(i) = (0..n).find(|&i| user.add(i).read() != FREED) {
            crate::os::fatal(format_args!(
                "write after free: the {}-byte block at {user:p} (kind {}) was written after it \
                 was freed, at offset {i} (byte {:#04x})",
                (*slot).size,
                kind_name((*slot).kind as usize),
                user.add(i).read()
            ));
        }
    }
}

/// The requested size of the live block at `p` (`owns(p)`).
///
/// # Safety
/// `owns(p)`.
pub(crate) unsafe fn usable(p: *mut u8, what: &str) -> usize {
    // SAFETY: under the lock; `live_slot` reports anything else.
    STATE.with(|s| unsafe { (*live_slot(s, p, what)).size })
}

/// The kind of the live block at `p`.
///
/// # Safety
/// `owns(p)`.
pub(crate) unsafe fn kind_of(p: *mut u8) -> usize {
    // SAFETY: as in `usable`.
    STATE.with(|s| unsafe { (*live_slot(s, p, "kind_of")).kind as usize })
}

/// At exit: every live block's canary and every quarantined block's fill, and one line saying
/// what was checked.
extern "C" fn census_at_exit() {
    let (live, bytes, quarantined) = STATE.with(|s| {
        // SAFETY: under the lock; every slot walked is ours.
        unsafe {
            for &(base, len) in &s.maps[..s.nmaps] {
                if len == 0 {
                    continue;
                }
                let mut x = base;
                while x < base + len {
                    let slot = x as *mut Slot;
                    let (magic, l) = ((*slot).magic, (*slot).len);
                    if (magic != SLOT_MAGIC && magic != GAP_MAGIC) || l == 0 {
                        break;
                    }
                    if magic == SLOT_MAGIC {
                        match (*slot).state {
                            LIVE => check_canary(slot, "exit"),
                            QUARANTINED => check_fill(slot),
                            _ => {}
                        }
                    }
                    x += l;
                }
            }
            (s.live_blocks, s.live_bytes, s.ring_len)
        }
    });
    let mut line = crate::text::StackStr::<200>::new();
    let _ = writeln!(
        line,
        "tensorpool: TENSORPOOL_CHECK=full: at exit {live} blocks live ({}), canaries intact; \
         {quarantined} freed blocks in quarantine, fills intact",
        crate::text::Bytes(bytes as u64)
    );
    crate::os::write_stderr(line.as_bytes());
}

fn kind_name(k: usize) -> &'static str {
    crate::kind::TensorKind::from_index(k).map_or("?", |k| k.name())
}
