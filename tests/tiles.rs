//! The tile planner: exact cover, no overlap and each tile within budget over many random shapes;
//! matmul blocks within budget; line-rounding; every invalid input answered by an error.

use tensorpool::{plan_matmul, plan_tiles, round_to_line, PlanError, TensorPool};
mod common;
use common::Rng;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[test]
fn random_plans_cover_exactly_without_overlap_within_budget() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let dims = 1 + r.below(4);
        let shape: Vec<usize> = (0..dims).map(|_| 1 + r.below(40)).collect();
        let elem = [1, 2, 4, 8][r.below(4)];
        let line = [16, 32, 64, 128][r.below(4)];
        let budget = line.max(elem) + r.below(20_000);
        let plan = plan_tiles(&shape, elem, budget, line).unwrap();
        assert!(plan.tile_bytes() <= budget, "{plan:?} over {budget}");
        let total: usize = shape.iter().product();
        let mut seen = vec![0u8; total];
        for ranges in plan.tiles() {
            let vol: usize = ranges.iter().map(|r| r.len()).product();
            assert!(vol * elem <= budget && vol > 0);
            // Visit every element of the tile (row-major index).
            let mut idx = vec![0usize; dims];
            for (d, r) in ranges.iter().enumerate() {
                idx[d] = r.start;
            }
            'tile: loop {
                let flat = idx.iter().zip(&shape).fold(0, |acc, (&i, &s)| acc * s + i);
                seen[flat] += 1;
                for d in (0..dims).rev() {
                    idx[d] += 1;
                    if idx[d] < ranges[d].end {
                        continue 'tile;
                    }
                    idx[d] = ranges[d].start;
                }
                break;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{plan:?}: not an exact cover");
        assert_eq!(plan.count(), plan.tiles().count());
    }
}

#[test]
fn inner_dimensions_stay_whole_when_they_fit() {
    // Attention scores of one head: 1088 x 1088 f32 = 4.5 MiB; a 1.5 MiB budget takes whole rows.
    let p = plan_tiles(&[16, 1088, 1088], 4, 1536 << 10, 64).unwrap();
    assert_eq!(p.tile, vec![1, 361, 1088]);
    // A row wider than the budget is split into whole cache lines.
    let p = plan_tiles(&[1_000_000], 4, 1000, 64).unwrap();
    assert_eq!(p.tile, vec![240]);
    assert_eq!(p.tile[0] * 4 % 64, 0);
}

#[test]
fn matmul_blocks_fit_the_budget() {
    let mut r = Rng(42);
    for _ in 0..2000 {
        let (m, n, k) = (1 + r.below(5000), 1 + r.below(5000), 1 + r.below(5000));
        let elem = [2, 4, 8][r.below(3)];
        let budget = 64 + r.below(8 << 20);
        let b = plan_matmul(m, n, k, elem, budget, 64).unwrap();
        assert!(b.bytes(elem) <= budget, "{b:?} elem {elem} budget {budget}");
        assert!(b.mb >= 1 && b.mb <= m && b.nb >= 1 && b.nb <= n && b.kb >= 1 && b.kb <= k);
    }
    // The reference shape: a 1088-token prefill's MLP, f32, per-core L3 share of the i5.
    let b = plan_matmul(1088, 8960, 1536, 4, 1536 << 10, 64).unwrap();
    assert!(
        b.bytes(4) <= 1536 << 10 && b.nb % 16 == 0 && b.kb % 16 == 0,
        "{b:?}"
    );
}

#[test]
fn rows_round_to_whole_lines() {
    assert_eq!(round_to_line(1000, 4, 64), Some(1008));
    assert_eq!(round_to_line(1024, 4, 64), Some(1024));
    assert_eq!(round_to_line(3, 2, 64), Some(32));
    assert_eq!(round_to_line(7, 3, 64), Some(64)); // 3-byte elements: lcm(3, 64) = 192 bytes
    assert_eq!(round_to_line(0, 4, 64), None);
    assert_eq!(round_to_line(usize::MAX / 2, 4, 64), None);
}

#[test]
fn invalid_inputs_are_errors() {
    assert_eq!(plan_tiles(&[], 4, 4096, 64), Err(PlanError::EmptyShape));
    assert_eq!(
        plan_tiles(&[3, 0, 2], 4, 4096, 64),
        Err(PlanError::ZeroDim(1))
    );
    assert_eq!(plan_tiles(&[3], 0, 4096, 64), Err(PlanError::ZeroElement));
    assert_eq!(
        plan_tiles(&[usize::MAX / 2, 4], 4, 4096, 64),
        Err(PlanError::Overflow)
    );
    assert_eq!(
        plan_tiles(&[8], 4, 32, 64),
        Err(PlanError::BudgetTooSmall {
            budget: 32,
            line: 64
        })
    );
    assert!(plan_matmul(0, 4, 4, 4, 4096, 64).is_err());
    assert!(plan_matmul(4, 4, 4, 4, 8, 64).is_err());
    let msg = PlanError::BudgetTooSmall {
        budget: 32,
        line: 64,
    }
    .to_string();
    assert!(msg.contains("32") && msg.contains("64"));
}
