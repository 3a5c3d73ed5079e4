//! The adapter layer through the public API: tensors, the manager, workspaces, the Qwen3-VL and
//! legacy adapters, and every error they return, with tensorpool as the global allocator.
use allocator_api2::alloc::Allocator;
use tensorpool::adapter::{
    checked_size, Bf16, LegacyAdapter, PoolManager, Qwen3VlAdapter, Qwen3VlConfig, Workspace, F16,
    TENSOR_ALIGN,
};
use tensorpool::{DType, PoolConfig, Tensor, TensorError, TensorKind, TensorPool};

mod common;

// A fixed thread-cache limit, so that which blocks stay in the thread (where no concurrent test's
// recycling can take them) does not depend on the machine's L3.
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_thread_cache(8 << 20));

/// Whether the calling test runs its body here: a test that reads a kind's live bytes, or sets
/// what is process-wide, runs alone in a child (`name` is its own name), since a concurrent
/// test of this binary moves or sees them (CI saw the activation kind's live bytes rise while a
/// workspace was dropped).
fn alone(name: &str) -> bool {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(name, &[]);
        return false;
    }
    true
}

fn f32_adapter() -> Qwen3VlAdapter {
    Qwen3VlAdapter::new(Qwen3VlConfig {
        base_capacity: None,
        dtype: DType::F32,
    })
}

#[test]
fn dtypes_have_sizes_and_parse() {
    let sizes = [4, 2, 2, 8, 1, 1, 4, 8, 1];
    for (d, s) in DType::ALL.iter().zip(sizes) {
        assert_eq!(d.size(), s, "{d}");
    }
    assert_eq!("torch.bfloat16".parse::<DType>().unwrap(), DType::BF16);
    assert!("float8".parse::<DType>().is_err());
}

#[test]
fn tensors_are_zeroed_aligned_typed_and_pooled_by_kind() {
    if !alone("tensors_are_zeroed_aligned_typed_and_pooled_by_kind") {
        return;
    }
    for (i, d) in DType::ALL.into_iter().enumerate() {
        for kind in TensorKind::ALL {
            let shape = [3, 5 + i, 7];
            let t = Tensor::zeros(&shape, d, kind).unwrap();
            assert_eq!(t.shape(), &shape);
            assert_eq!((t.dtype(), t.kind()), (d, kind));
            assert_eq!(t.numel(), 3 * (5 + i) * 7);
            assert_eq!(t.nbytes(), t.numel() * d.size());
            assert_eq!(t.as_ptr() as usize % TENSOR_ALIGN, 0);
            assert!(t.as_bytes().iter().all(|&b| b == 0));
            // The storage came from the kind's pool.
            assert_eq!(unsafe { ALLOC.kind_of(t.as_ptr() as *mut u8) }, kind);
        }
    }
    // A 1 MiB tensor of a kind is a block of that kind's large pool; dropping it caches it there.
    let kind = TensorKind::TextEmbedding;
    let t = Tensor::zeros(&[256, 1024], DType::F32, kind).unwrap();
    assert_eq!(unsafe { ALLOC.kind_of(t.as_ptr() as *mut u8) }, kind);
    let before = ALLOC.stats().kind(kind).live_bytes;
    drop(t);
    assert!(ALLOC.stats().kind(kind).live_bytes < before);
}

#[test]
fn typed_access_checks_the_element_type_and_keeps_values() {
    let mut t = Tensor::zeros(&[4, 4], DType::F32, TensorKind::Activation).unwrap();
    for (i, v) in t.as_mut_slice::<f32>().unwrap().iter_mut().enumerate() {
        *v = i as f32 * 0.5;
    }
    assert_eq!(t.as_slice::<f32>().unwrap()[15], 7.5);
    assert_eq!(
        t.as_slice::<i32>().unwrap_err(),
        TensorError::DTypeMismatch {
            tensor: DType::F32,
            requested: DType::I32
        }
    );
    t.reshape(&[2, 8]).unwrap();
    assert_eq!(t.shape(), &[2, 8]);
    assert_eq!(
        t.as_slice::<f32>().unwrap()[15],
        7.5,
        "reshape keeps the data"
    );
    assert!(matches!(
        t.reshape(&[3, 5]),
        Err(TensorError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        t.reshape(&[0, 16]),
        Err(TensorError::ZeroDimension { axis: 0, .. })
    ));
    assert_eq!(t.shape(), &[2, 8], "a failed reshape changes nothing");

    let mut h = Tensor::zeros(&[3], DType::F16, TensorKind::General).unwrap();
    h.fill(F16::from_f32(1.5)).unwrap();
    assert_eq!(h.as_slice::<F16>().unwrap()[2].to_f32(), 1.5);
    let mut b = Tensor::zeros(&[3], DType::BF16, TensorKind::General).unwrap();
    b.fill(Bf16::from_f32(-2.0)).unwrap();
    assert_eq!(b.as_slice::<Bf16>().unwrap()[0].to_f32(), -2.0);
    let mut m = Tensor::zeros(&[5], DType::Bool, TensorKind::General).unwrap();
    m.as_mut_slice::<bool>().unwrap()[3] = true;
    assert_eq!(m.as_bytes(), &[0, 0, 0, 1, 0]);
    let s = Tensor::from_slice(&[2, 2], &[1i64, 2, 3, 4], TensorKind::General).unwrap();
    assert_eq!(s.as_slice::<i64>().unwrap(), &[1, 2, 3, 4]);
    assert!(matches!(
        Tensor::from_slice(&[2, 3], &[1u8, 2], TensorKind::General),
        Err(TensorError::ShapeMismatch { .. })
    ));
    let scalar = Tensor::zeros(&[], DType::F64, TensorKind::General).unwrap();
    assert_eq!(scalar.numel(), 1);
}

#[test]
fn bad_shapes_and_impossible_sizes_are_errors() {
    let e = Tensor::zeros(&[4, 0, 2], DType::F32, TensorKind::General).unwrap_err();
    assert_eq!(
        e,
        TensorError::ZeroDimension {
            shape: vec![4, 0, 2],
            axis: 1
        }
    );
    assert!(e.to_string().contains("zero dimension (axis 1)"), "{e}");
    for shape in [
        vec![usize::MAX, 2],
        vec![1 << 32, 1 << 32],
        vec![1 << 62, 1],                   // fits in usize, but not as bytes of f32
        vec![(isize::MAX as usize) / 2, 1], // over isize::MAX bytes
    ] {
        let e = Tensor::zeros(&shape, DType::F32, TensorKind::General).unwrap_err();
        assert!(matches!(e, TensorError::Overflow { .. }), "{shape:?}: {e}");
        assert!(e.to_string().contains("overflows"), "{e}");
    }
    assert_eq!(checked_size(&[3, 5], DType::I64).unwrap(), (15, 120));
    // Representable, but no machine has it: the allocator's refusal is an error too.
    let e = Tensor::zeros(&[1 << 40, 1 << 20], DType::U8, TensorKind::KvCache).unwrap_err();
    assert_eq!(
        e,
        TensorError::OutOfMemory {
            bytes: 1 << 60,
            kind: TensorKind::KvCache
        }
    );
    assert!(
        e.to_string().contains("kv_cache pool could not provide"),
        "{e}"
    );
}

#[test]
fn tensors_in_a_limited_handle_are_refused_over_the_limit() {
    let h = ALLOC
        .handle(TensorKind::ImageEmbedding)
        .with_limit(768 << 10);
    let a = Tensor::zeros_in(&[512, 256], DType::F32, TensorKind::ImageEmbedding, h).unwrap();
    let e = Tensor::zeros_in(&[512, 256], DType::F32, TensorKind::ImageEmbedding, h).unwrap_err();
    assert!(matches!(e, TensorError::OutOfMemory { bytes: 524_288, .. }));
    assert_eq!(ALLOC.limited_bytes(TensorKind::ImageEmbedding), 512 * 1024);
    drop(a);
    assert_eq!(ALLOC.limited_bytes(TensorKind::ImageEmbedding), 0);
    // The handle is an ordinary Allocator too.
    let l = std::alloc::Layout::from_size_align(64, 64).unwrap();
    let p = h.allocate(l).unwrap();
    unsafe { h.deallocate(p.cast(), l) };
}

#[test]
fn the_manager_returns_tensors_to_their_pool_and_refuses_the_wrong_one() {
    let mut m = PoolManager::new(DType::F16);
    let mut t = m.get_tensor(&[8, 512, 512], TensorKind::Attention).unwrap();
    assert_eq!((t.dtype(), t.kind()), (DType::F16, TensorKind::Attention));
    t.fill(F16::from_f32(0.25)).unwrap();
    assert_eq!(m.outstanding(TensorKind::Attention), 1);
    // Wrong pool: refused, and the tensor comes back unharmed.
    let err = m.return_tensor(t, TensorKind::KvCache).unwrap_err();
    assert_eq!(err.given, TensorKind::KvCache);
    assert_eq!(err.belongs_to(), TensorKind::Attention);
    assert!(err.to_string().contains(
        "attention tensor of shape [8, 512, 512] cannot be returned to the kv_cache pool"
    ));
    let t = err.into_tensor();
    assert_eq!(t.shape(), &[8, 512, 512]);
    assert!(t
        .as_slice::<F16>()
        .unwrap()
        .iter()
        .all(|h| h.to_f32() == 0.25));
    assert_eq!(m.outstanding(TensorKind::Attention), 1);
    let addr = t.as_ptr();
    m.return_tensor(t, TensorKind::Attention).unwrap();
    assert_eq!(m.outstanding(TensorKind::Attention), 0);
    // The storage went back to the attention pool: the next tensor of that size reuses it.
    let again = m
        .get_tensor_of(&[8, 512, 512], DType::F16, TensorKind::Attention)
        .unwrap();
    assert_eq!(again.as_ptr(), addr);
    assert!(again.as_bytes().iter().all(|&b| b == 0), "zeroed on reuse");
    assert_eq!(m.handed_out(TensorKind::Attention), 2);
    assert!(matches!(
        m.get_tensor(&[0], TensorKind::General),
        Err(TensorError::ZeroDimension { .. })
    ));
    assert_eq!(
        m.handed_out(TensorKind::General),
        0,
        "failures are not counted"
    );
}

#[test]
fn a_workspace_tracks_reports_and_releases_everything_once() {
    if !alone("a_workspace_tracks_reports_and_releases_everything_once") {
        return;
    }
    let mut ws = Workspace::new();
    let a = ws
        .alloc(&[1, 576, 1152], DType::F32, TensorKind::ImageEmbedding)
        .unwrap();
    let b = ws
        .alloc(&[2, 1, 8, 64, 128], DType::BF16, TensorKind::KvCache)
        .unwrap();
    let c = ws.adopt(Tensor::zeros(&[16], DType::I32, TensorKind::General).unwrap());
    ws.get_mut(a).unwrap().as_mut_slice::<f32>().unwrap()[7] = 3.0;
    assert_eq!(ws.get(a).unwrap().as_slice::<f32>().unwrap()[7], 3.0);
    let r = ws.report();
    assert_eq!(r.tensors, 3);
    assert_eq!(r.bytes, 576 * 1152 * 4 + 2 * 8 * 64 * 128 * 2 + 64);
    assert_eq!(r.kind(TensorKind::KvCache), (1, 2 * 8 * 64 * 128 * 2));
    assert!(r.to_string().starts_with("3 tensors"), "{r}");
    // Taking a tensor out stops tracking it.
    let taken = ws.take(c).unwrap();
    assert!(ws.get(c).is_none() && ws.take(c).is_none());
    assert_eq!(ws.report().tensors, 2);
    assert!(matches!(
        ws.alloc(&[usize::MAX, 2], DType::F32, TensorKind::General),
        Err(TensorError::Overflow { .. })
    ));
    assert_eq!(ws.report().tensors, 2, "a failed allocation adds nothing");

    let live = ALLOC.stats().kind(TensorKind::ImageEmbedding).live_bytes;
    let released = ws.cleanup();
    assert_eq!((released.tensors, released.bytes), (2, r.bytes - 64));
    assert!(ALLOC.stats().kind(TensorKind::ImageEmbedding).live_bytes < live);
    assert!(
        ws.get(a).is_none() && ws.get(b).is_none(),
        "old ids name nothing"
    );
    // Cleaning twice releases nothing the second time.
    assert_eq!(ws.cleanup().tensors, 0);
    // The workspace is reusable; an id from before the cleanup does not alias a new tensor.
    let d = ws.alloc(&[4], DType::U8, TensorKind::General).unwrap();
    assert!(ws.get(a).is_none());
    assert!(ws.get(d).is_some());
    assert!(ws.release(d) && !ws.release(d));
    drop(taken);
    // Dropping a workspace releases what it holds.
    let mut ws2 = Workspace::new();
    ws2.alloc(&[1 << 20], DType::U8, TensorKind::Activation)
        .unwrap();
    let live = ALLOC.stats().kind(TensorKind::Activation).live_bytes;
    drop(ws2);
    assert!(ALLOC.stats().kind(TensorKind::Activation).live_bytes < live);
}

#[test]
fn the_qwen3vl_adapter_allocates_documented_shapes_from_their_pools() {
    let ad = f32_adapter();
    let cases = [
        (
            ad.allocate_attention_weights(1, 8, 512).unwrap(),
            vec![1, 8, 512, 512],
            TensorKind::Attention,
        ),
        (
            ad.allocate_kv_cache(1, 32, 1024, 128).unwrap(),
            vec![2, 1, 32, 1024, 128],
            TensorKind::KvCache,
        ),
        (
            ad.allocate_image_features(1, 576, 1152).unwrap(),
            vec![1, 576, 1152],
            TensorKind::ImageEmbedding,
        ),
        (
            ad.allocate_text_embeddings(1, 512, 4096).unwrap(),
            vec![1, 512, 4096],
            TensorKind::TextEmbedding,
        ),
        (
            ad.allocate_intermediate_activations(1, 512, 11008).unwrap(),
            vec![1, 512, 11008],
            TensorKind::Activation,
        ),
        (
            ad.allocate(&[3, 3], TensorKind::General).unwrap(),
            vec![3, 3],
            TensorKind::General,
        ),
    ];
    for (t, shape, kind) in &cases {
        assert_eq!(t.shape(), shape.as_slice());
        assert_eq!(t.kind(), *kind);
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(unsafe { ALLOC.kind_of(t.as_ptr() as *mut u8) }, *kind);
    }
    assert!(matches!(
        ad.allocate_kv_cache(1, 0, 16, 64),
        Err(TensorError::ZeroDimension { axis: 2, .. })
    ));
    let s = ad.get_pool_statistics();
    let u = s.aggregate.total_utilization_percent;
    assert!((0.0..=100.0).contains(&u), "{u}");
    assert!(s.specialized_pool_stats.stats.live_bytes >= 4 * 1024 * 1024);
    assert_eq!(
        s.aggregate.stats.requests,
        s.general_pool_stats.stats.requests + s.specialized_pool_stats.stats.requests
    );
    assert!(s.alignment_overhead_percent >= 0.0);
    drop(cases);
}

#[test]
fn the_reference_config_sets_every_specialised_capacity() {
    // A child of its own: capacities are process-wide.
    if !alone("the_reference_config_sets_every_specialised_capacity") {
        return;
    }
    let ad = Qwen3VlAdapter::default();
    assert_eq!(ad.config().dtype, DType::F16);
    for k in &TensorKind::ALL[1..] {
        assert_eq!(ALLOC.capacity(*k), 2 << 30, "{k}");
    }
    assert_eq!(
        ad.allocate_image_features(1, 2, 2).unwrap().dtype(),
        DType::F16
    );
}

#[test]
fn the_legacy_adapter_parses_tensor_types_and_reports_errors() {
    let legacy = LegacyAdapter::new(Qwen3VlConfig {
        base_capacity: None,
        dtype: DType::F16,
    });
    for (ty, kind) in [
        ("attention_weights", TensorKind::Attention),
        ("attention", TensorKind::Attention),
        ("kv_cache", TensorKind::KvCache),
        ("image_features", TensorKind::ImageEmbedding),
        ("text_embeddings", TensorKind::TextEmbedding),
        ("intermediate_activations", TensorKind::Activation),
        ("general", TensorKind::General),
    ] {
        let t = legacy
            .allocate_tensor_memory(&[8, 64, 64], DType::F16, ty)
            .unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(t.kind(), kind, "{ty}");
        assert_eq!(t.shape(), &[8, 64, 64]);
    }
    let e = legacy
        .allocate_tensor_memory(&[8], DType::F16, "optimizer_state")
        .unwrap_err();
    assert!(matches!(e, TensorError::UnknownKind(_)));
    assert!(e.to_string().contains("\"optimizer_state\""), "{e}");
    assert!(matches!(
        legacy.allocate_tensor_memory(&[8, 0], DType::F16, "kv_cache"),
        Err(TensorError::ZeroDimension { .. })
    ));
    assert!(matches!(
        legacy.allocate_tensor_memory(&[usize::MAX, usize::MAX], DType::F32, "kv_cache"),
        Err(TensorError::Overflow { .. })
    ));
    assert!(matches!(
        legacy.allocate_tensor_memory(&[1 << 61], DType::U8, "kv_cache"),
        Err(TensorError::OutOfMemory { .. })
    ));
    assert_eq!(legacy.adapter().config().dtype, DType::F16);
}
