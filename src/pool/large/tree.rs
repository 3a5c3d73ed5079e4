//! A tree of free runs in address order, for address-ordered fit.
//!
//! The nodes are the first extents of free runs (see `arena`), each spanning `span` bytes. A
//! treap (a binary search tree on `base`, a heap on `prio`), each node carrying the largest
//! `span` in its subtree (`max`), so the lowest- or highest-addressed run of at least `n` bytes is
//! found by one descent, O(depth): towards the wanted end while that subtree holds a fit, stop at
//! a node that fits, else the other way. Why address order rather than best fit by size class:
//! it packs blocks at one end of the arena, so the free space left is a few large runs at the
//! other, and, given the same sequence of requests, it makes the same placements from the same
//! free space; a repeated inference request therefore lands on the pages the previous one
//! dirtied, and faults nothing (best fit by class picks among runs by size and can diverge from
//! one request to the next). Wilson et al.'s survey (1995) measured both with low
//! fragmentation.
//!
//! Invariants (checked by `check` in tests and models): in-order traversal is ascending in
//! `base`; `prio(parent) >= prio(child)`; `max == max(span, left.max, right.max)`; `parent`
//! links match; `bytes` and `count` are the sums over the nodes.
//!
//! Every function takes raw descriptors; the caller (the arena, under its lock) owns them.

use super::extent::Extent;
use core::ptr;

pub(crate) struct Tree {
    root: *mut Extent,
    /// Sum of the nodes' sizes.
    pub(crate) bytes: usize,
    /// Number of nodes.
    pub(crate) count: usize,
}

/// `max` of a possibly null subtree.
///
/// # Safety
/// `e` is null or a node of a tree.
#[inline]
unsafe fn max_of(e: *mut Extent) -> usize {
    if e.is_null() {
        0
    } else {
        // SAFETY: the caller's contract.
        unsafe { (*e).max }
    }
}

/// Recompute `e.max` from its size and children.
///
/// # Safety
/// `e` is a node whose children's `max` are up to date.
#[inline]
unsafe fn fix(e: *mut Extent) {
    // SAFETY: the caller's contract.
    unsafe { (*e).max = (*e).span.max(max_of((*e).left)).max(max_of((*e).right)) }
}

impl Tree {
    pub(crate) const fn new() -> Self {
        Self {
            root: ptr::null_mut(),
            bytes: 0,
            count: 0,
        }
    }

    /// Fix `max` from `e` up to the root.
    ///
    /// # Safety
    /// `e` is null or a node of this tree whose subtrees' `max` are right.
    unsafe fn fix_up(&mut self, mut e: *mut Extent) {
        // SAFETY: every node on the path to the root belongs to this tree.
        unsafe {
            while !e.is_null() {
                fix(e);
                e = (*e).parent;
            }
        }
    }

    /// Replace `old` by `new` in `old`'s parent (or the root).
    ///
    /// # Safety
    /// `old` is a node of this tree; `new` is null or takes `old`'s place.
    unsafe fn replace_child(&mut self, old: *mut Extent, new: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            let p = (*old).parent;
            if p.is_null() {
                self.root = new;
            } else if (*p).left == old {
                (*p).left = new;
            } else {
                (*p).right = new;
            }
            if !new.is_null() {
                (*new).parent = p;
            }
        }
    }

    /// Rotate `x` above its parent, keeping the order and fixing both nodes' `max`.
    ///
    /// # Safety
    /// `x` is a node of this tree with a parent.
    unsafe fn rotate_up(&mut self, x: *mut Extent) {
        // SAFETY: `x` and its parent are nodes of this tree.
        unsafe {
            let p = (*x).parent;
            self.replace_child(p, x);
            if (*p).left == x {
                let b = (*x).right;
                (*p).left = b;
                if !b.is_null() {
                    (*b).parent = p;
                }
                (*x).right = p;
            } else {
                let b = (*x).left;
                (*p).right = b;
                if !b.is_null() {
                    (*b).parent = p;
                }
                (*x).left = p;
            }
            (*p).parent = x;
            fix(p);
            fix(x);
        }
    }

    /// Insert a run's first extent (its `span` set).
    ///
    /// # Safety
    /// `e` is a valid descriptor on no tree, with `base` distinct from every node's.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) unsafe fn insert(&mut self, e: *mut Extent) {
        // SAFETY: `e` is ours and every node reached is this tree's.
        unsafe {
            (*e).prio = Extent::prio_for((*e).base);
            (*e).left = ptr::null_mut();
            (*e).right = ptr::null_mut();
            (*e).max = (*e).span;
            let mut parent = ptr::null_mut::<Extent>();
            let mut cur = self.root;
            while !cur.is_null() {
                parent = cur;
                debug_assert_ne!((*cur).base, (*e).base, "two runs at one address");
                cur = if (*e).base < (*cur).base {
                    (*cur).left
                } else {
                    (*cur).right
                };
            }
            (*e).parent = parent;
            if parent.is_null() {
                self.root = e;
            } else if (*e).base < (*parent).base {
                (*parent).left = e;
            } else {
                (*parent).right = e;
            }
            self.fix_up(parent);
            while !(*e).parent.is_null() && (*(*e).parent).prio < (*e).prio {
                self.rotate_up(e);
            }
            self.fix_up((*e).parent);
            self.bytes += (*e).span;
            self.count += 1;
        }
    }

    /// Remove a node.
    ///
    /// # Safety
    /// `e` is a node of this tree.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) unsafe fn remove(&mut self, e: *mut Extent) {
        // SAFETY: `e` and every node reached are this tree's.
        unsafe {
            // Rotate `e` down below its higher-priority child until it has at most one child.
            while !(*e).left.is_null() && !(*e).right.is_null() {
                let (l, r) = ((*e).left, (*e).right);
                let up = if (*l).prio > (*r).prio { l } else { r };
                self.rotate_up(up);
            }
            let child = if (*e).left.is_null() {
                (*e).right
            } else {
                (*e).left
            };
            let parent = (*e).parent;
            self.replace_child(e, child);
            self.fix_up(parent);
            (*e).parent = ptr::null_mut();
            (*e).left = ptr::null_mut();
            (*e).right = ptr::null_mut();
            self.bytes -= (*e).span;
            self.count -= 1;
        }
    }

    /// A node's span changed in place (its base did not): refresh the sums and `max`.
    #[cfg(test)]
    ///
    /// # Safety
    /// `e` is a node of this tree; `old` was its span when it was last inserted or resized.
    pub(crate) unsafe fn resized(&mut self, e: *mut Extent, old: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            self.bytes = self.bytes - old + (*e).span;
            self.fix_up(e);
        }
    }

    /// The child of `e` on the wanted end's side (`HIGH`: the higher addresses), or on the
    /// other (`NEAR` false).
    ///
    /// # Safety
    /// `e` is a node of this tree.
    #[inline]
    unsafe fn child<const HIGH: bool, const NEAR: bool>(e: *mut Extent) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            if HIGH == NEAR {
                (*e).right
            } else {
                (*e).left
            }
        }
    }

    /// The node of at least `need` bytes nearest the wanted end (`HIGH`: the highest-addressed,
    /// else the lowest) within the subtree at `n`.
    ///
    /// # Safety
    /// `n` is null or a node of this tree.
    unsafe fn fit_in<const HIGH: bool>(mut n: *mut Extent, need: usize) -> *mut Extent {
        // SAFETY: every node reached is this tree's.
        unsafe {
            if n.is_null() || (*n).max < need {
                return ptr::null_mut();
            }
            loop {
                let near = Self::child::<HIGH, true>(n);
                if !near.is_null() && (*near).max >= need {
                    n = near;
                } else if (*n).span >= need {
                    return n;
                } else {
                    // `max >= need` and neither the near subtree nor `n` fits.
                    n = Self::child::<HIGH, false>(n);
                    debug_assert!(!n.is_null());
                }
            }
        }
    }

    /// The node after `e`, going away from the wanted end (`HIGH`: down in address order,
    /// else up), with at least `need` bytes, or null.
    ///
    /// # Safety
    /// `e` is a node of this tree.
    unsafe fn following_fit<const HIGH: bool>(mut e: *mut Extent, need: usize) -> *mut Extent {
        // SAFETY: every node reached is this tree's.
        unsafe {
            let f = Self::fit_in::<HIGH>(Self::child::<HIGH, false>(e), need);
            if !f.is_null() {
                return f;
            }
            loop {
                let p = (*e).parent;
                if p.is_null() {
                    return ptr::null_mut();
                }
                if Self::child::<HIGH, true>(p) == e {
                    if (*p).span >= need {
                        return p;
                    }
                    let f = Self::fit_in::<HIGH>(Self::child::<HIGH, false>(p), need);
                    if !f.is_null() {
                        return f;
                    }
                }
                e = p;
            }
        }
    }

    /// The highest-addressed node holding `need` bytes that start on a multiple of `align` (a
    /// power of two, at least a page), and the highest such start in it; `(null, 0)` if there
    /// is none. For a zone that grows downwards (segments): its oldest memory first.
    pub(crate) fn last_fit(&self, need: usize, align: usize) -> (*mut Extent, usize) {
        // SAFETY: the root and everything below it are this tree's nodes.
        unsafe {
            let mut e = Self::fit_in::<true>(self.root, need);
            while !e.is_null() {
                let a = ((*e).base + (*e).span - need) & !(align - 1);
                if a >= (*e).base {
                    return (e, a);
                }
                e = Self::following_fit::<true>(e, need);
            }
        }
        (ptr::null_mut(), 0)
    }

    /// The lowest-addressed node holding `need` bytes that start on a multiple of `align` (a
    /// power of two, at least a page), and that start; `(null, 0)` if there is none.
    pub(crate) fn first_fit(&self, need: usize, align: usize) -> (*mut Extent, usize) {
        // SAFETY: the root and everything below it are this tree's nodes.
        unsafe {
            let mut e = Self::fit_in::<false>(self.root, need);
            while !e.is_null() {
                let a = (*e).base.next_multiple_of(align);
                if a + need <= (*e).base + (*e).span {
                    return (e, a);
                }
                e = Self::following_fit::<false>(e, need);
            }
        }
        (ptr::null_mut(), 0)
    }

    /// Check the invariants in the module docs; panics on a violation (tests and models only).
    #[cfg(any(test, loom, feature = "check"))]
    pub(crate) fn check(&self) {
        /// Returns (count, bytes, max) of the subtree, checking order within (lo, hi).
        ///
        /// # Safety
        /// `e` is null or a node of this tree, whose nodes are live descriptors.
        unsafe fn walk(e: *mut Extent, lo: usize, hi: usize) -> (usize, usize, usize) {
            if e.is_null() {
                return (0, 0, 0);
            }
            // SAFETY: nodes of the tree being checked.
            unsafe {
                assert!(
                    (*e).base >= lo && (*e).base < hi,
                    "tree out of address order"
                );
                for c in [(*e).left, (*e).right] {
                    if !c.is_null() {
                        assert_eq!((*c).parent, e, "broken parent link");
                        assert!((*c).prio <= (*e).prio, "heap order broken");
                    }
                }
                let (lc, lb, lm) = walk((*e).left, lo, (*e).base);
                let (rc, rb, rm) = walk((*e).right, (*e).base + (*e).span, hi);
                let m = (*e).span.max(lm).max(rm);
                assert_eq!((*e).max, m, "stale subtree max");
                (lc + rc + 1, lb + rb + (*e).span, m)
            }
        }
        // SAFETY: this tree's nodes.
        let (c, b, _) = unsafe { walk(self.root, 0, usize::MAX) };
        assert_eq!((c, b), (self.count, self.bytes), "tree sums");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(base: usize, size: usize) -> *mut Extent {
        let mut e = Box::new(Extent::EMPTY);
        e.base = base;
        e.span = size;
        Box::into_raw(e)
    }

    /// Random inserts, removals, resizes and fit queries against a map as the oracle.
    #[test]
    fn first_and_last_fit_match_a_scan_of_an_ordered_map() {
        let mut t = Tree::new();
        let mut oracle: BTreeMap<usize, (usize, *mut Extent)> = BTreeMap::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        };
        const P: usize = 4096;
        for step in 0..20_000 {
            match rnd(4) {
                0 | 1 => {
                    // Slots of 64 pages keep extents disjoint.
                    let base = rnd(4096) * 64 * P;
                    if let std::collections::btree_map::Entry::Vacant(v) = oracle.entry(base) {
                        let size = (rnd(64) + 1) * P;
                        let e = node(base, size);
                        // SAFETY: a fresh node at an address no node has.
                        unsafe { t.insert(e) };
                        v.insert((size, e));
                    }
                }
                2 => {
                    if let Some((&b, &(_, e))) = oracle.iter().nth(rnd(oracle.len() as u64 + 1)) {
                        // SAFETY: `e` is a node of the tree, made by `node`.
                        unsafe {
                            t.remove(e);
                            drop(Box::from_raw(e));
                        }
                        oracle.remove(&b);
                    }
                }
                _ => {
                    if let Some((&b, &(old, e))) = oracle.iter().nth(rnd(oracle.len() as u64 + 1)) {
                        let size = (rnd(64) + 1) * P;
                        // SAFETY: `e` is a node of the tree whose span was `old`.
                        unsafe {
                            (*e).span = size;
                            t.resized(e, old);
                        }
                        oracle.insert(b, (size, e));
                    }
                }
            }
            let need = (rnd(64) + 1) * P;
            let align = P << rnd(6);
            let want = oracle
                .iter()
                .find(|(&b, &(s, _))| b.next_multiple_of(align) + need <= b + s)
                .map(|(&b, &(_, e))| (e, b.next_multiple_of(align)));
            let got = t.first_fit(need, align);
            assert_eq!(
                want.unwrap_or((ptr::null_mut(), 0)),
                got,
                "step {step}: need {need} align {align}"
            );
            let want_last = oracle
                .iter()
                .rev()
                .find(|(&b, &(s, _))| s >= need && (b + s - need) & !(align - 1) >= b)
                .map(|(&b, &(s, e))| (e, (b + s - need) & !(align - 1)));
            assert_eq!(
                want_last.unwrap_or((ptr::null_mut(), 0)),
                t.last_fit(need, align),
                "step {step}: last fit, need {need} align {align}"
            );
            if step % 997 == 0 {
                t.check();
            }
        }
        t.check();
        for (_, (_, e)) in oracle {
            // SAFETY: `e` is a node of the tree, made by `node`.
            unsafe {
                t.remove(e);
                drop(Box::from_raw(e));
            }
        }
        assert_eq!((t.count, t.bytes), (0, 0));
    }
}
