//! Rank-based byte-pair merging over token ids.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative hasher for the packed `(left, right)` id pairs (keys are already
/// well distributed small integers; SipHash would dominate the merge loop).
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, k: u64) {
        let x = (self.0 ^ k).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

type PairMap = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

#[inline]
fn key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Merge table: `(left id, right id) -> (rank, merged id)`.
pub(crate) struct Merges {
    map: PairMap,
}

const NONE: u32 = u32::MAX;

struct Sym {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

impl Merges {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Merges {
            map: PairMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Adds a merge; an earlier (lower-rank) entry for the same pair wins.
    pub(crate) fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.map.entry(key(left, right)).or_insert((rank, merged));
    }

    #[inline]
    fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.map.get(&key(left, right)).copied()
    }

    /// Applies merges to `ids` (initially one id per byte) in rank order, always merging
    /// the lowest-ranked adjacent pair, leftmost first on ties. Appends the result to `out`.
    /// O(n log n) in the number of symbols.
    pub(crate) fn apply(&self, ids: &[u32], out: &mut Vec<u32>) {
        if ids.len() < 2 {
            out.extend_from_slice(ids);
            return;
        }
        let n = ids.len();
        let mut syms: Vec<Sym> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Sym {
                id,
                prev: if i == 0 { NONE } else { (i - 1) as u32 },
                next: if i + 1 == n { NONE } else { (i + 1) as u32 },
                alive: true,
            })
            .collect();
        // (rank, left position, merged id); min-heap through Reverse.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some((rank, merged)) = self.get(ids[i], ids[i + 1]) {
                heap.push(Reverse((rank, i as u32, merged)));
            }
        }
        while let Some(Reverse((rank, pos, merged))) = heap.pop() {
            let p = pos as usize;
            let s = &syms[p];
            if !s.alive || s.next == NONE {
                continue;
            }
            let q = s.next as usize;
            // Stale entry: the pair changed since it was queued.
            if self.get(s.id, syms[q].id) != Some((rank, merged)) {
                continue;
            }
            let after = syms[q].next;
            syms[q].alive = false;
            syms[p].id = merged;
            syms[p].next = after;
            if after != NONE {
                syms[after as usize].prev = pos;
                if let Some((r, m)) = self.get(merged, syms[after as usize].id) {
                    heap.push(Reverse((r, pos, m)));
                }
            }
            let before = syms[p].prev;
            if before != NONE {
                if let Some((r, m)) = self.get(syms[before as usize].id, merged) {
                    heap.push(Reverse((r, before, m)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let s = &syms[i as usize];
            out.push(s.id);
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &Merges, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        m.apply(ids, &mut out);
        out
    }

    #[test]
    fn rank_order_and_leftmost_ties() {
        // ids: a=0 b=1 c=2; ab=3 bc=4 abc=5 aa=6
        let mut m = Merges::with_capacity(8);
        m.insert(1, 2, 0, 4); // b c -> bc (rank 0)
        m.insert(0, 1, 1, 3); // a b -> ab (rank 1)
        m.insert(0, 4, 2, 5); // a bc -> abc
        m.insert(0, 0, 3, 6); // a a -> aa
        assert_eq!(run(&m, &[0, 1, 2]), [5]);
        assert_eq!(run(&m, &[0, 1]), [3]);
        // "aaa": leftmost pair first -> (aa)(a)
        assert_eq!(run(&m, &[0, 0, 0]), [6, 0]);
        assert_eq!(run(&m, &[0, 0, 0, 0]), [6, 6]);
        assert_eq!(run(&m, &[2, 2]), [2, 2]);
        assert_eq!(run(&m, &[]), Vec::<u32>::new());
        assert_eq!(run(&m, &[1]), [1]);
        // "abab c": b c wins over a b at the end
        assert_eq!(run(&m, &[0, 1, 0, 1, 2]), [3, 5]);
    }

    #[test]
    fn duplicate_pair_keeps_lowest_rank() {
        let mut m = Merges::with_capacity(2);
        m.insert(0, 1, 5, 7);
        m.insert(0, 1, 9, 8);
        assert_eq!(run(&m, &[0, 1]), [7]);
    }
}
