//! The loader: batches depend only on the seed (not on the worker count), resume exactly
//! from a saved state, differ across seeds, drop the partial batch of an epoch, report
//! worker errors through `next`, and stop cleanly when dropped.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{names, open_voc, tempdir, voc};
use rfnc_data::synthetic::write_nyud;
use rfnc_data::{AugmentConfig, Batch, DataError, Dataset, DatasetKind, Loader, LoaderState};

fn loader(
    ds: &Arc<Dataset>,
    batch: usize,
    seed: u64,
    workers: usize,
    start: LoaderState,
) -> Loader {
    Loader::new(
        ds.clone(),
        AugmentConfig::new((24, 32)),
        batch,
        seed,
        workers,
        start,
    )
    .unwrap()
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next().unwrap().0).collect()
}

/// 7 training samples: 3 batches of 2 per epoch, one sample left out each epoch.
fn seven() -> (tempfile::TempDir, Arc<Dataset>) {
    let dir = voc(7, 0, 21);
    let ds = Arc::new(open_voc(dir.path(), "train"));
    (dir, ds)
}

#[test]
fn batches_depend_on_the_seed_not_the_worker_count() {
    let (_dir, ds) = seven();
    let one = take(&mut loader(&ds, 2, 42, 1, LoaderState::default()), 8);
    let three = take(&mut loader(&ds, 2, 42, 3, LoaderState::default()), 8);
    assert_eq!(one, three);
    let b = &one[0];
    assert_eq!((b.len(), b.height, b.width), (2, 24, 32));
    assert_eq!(b.images.len(), 2 * 3 * 24 * 32);
    assert_eq!(b.labels.as_ref().map(Vec::len), Some(2 * 24 * 32));
    assert!(b.depth.is_none());
    assert!(b
        .labels
        .as_ref()
        .unwrap()
        .iter()
        .all(|&l| (0..3).contains(&l) || l == 255));
}

#[test]
fn each_epoch_is_a_permutation_without_its_partial_batch() {
    let (_dir, ds) = seven();
    let mut l = loader(&ds, 2, 1, 2, LoaderState::default());
    assert_eq!(l.iters_per_epoch(), 3);
    let mut orders = Vec::new();
    for epoch in 0..3u64 {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(l.next().unwrap().0.samples);
        }
        assert_eq!(
            seen.iter().collect::<BTreeSet<_>>().len(),
            6,
            "no repeats in an epoch"
        );
        assert_eq!(
            l.state(),
            LoaderState {
                epoch: epoch + 1,
                position: 0
            }
        );
        orders.push(seen);
    }
    assert!(
        orders[0] != orders[1] || orders[1] != orders[2],
        "epochs are shuffled anew"
    );
}

#[test]
fn a_loader_started_from_state_continues_exactly() {
    let (_dir, ds) = seven();
    let mut first = loader(&ds, 2, 7, 2, LoaderState::default());
    take(&mut first, 4);
    let state = first.state();
    assert_eq!(
        state,
        LoaderState {
            epoch: 1,
            position: 2
        }
    );
    let json = serde_json::to_string(&state).unwrap();
    let restored: LoaderState = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, state);
    let mut resumed = loader(&ds, 2, 7, 3, restored);
    assert_eq!(take(&mut resumed, 5), take(&mut first, 5));
    assert_eq!(resumed.state(), first.state());
}

#[test]
fn a_state_without_room_for_a_batch_starts_the_next_epoch() {
    let (_dir, ds) = seven();
    let late = LoaderState {
        epoch: 2,
        position: 6,
    };
    let mut a = loader(&ds, 2, 3, 1, late);
    assert_eq!(
        a.state(),
        LoaderState {
            epoch: 3,
            position: 0
        }
    );
    let mut b = loader(
        &ds,
        2,
        3,
        1,
        LoaderState {
            epoch: 3,
            position: 0,
        },
    );
    assert_eq!(take(&mut a, 2), take(&mut b, 2));
}

#[test]
fn different_seeds_give_different_batches() {
    let (_dir, ds) = seven();
    let a = take(&mut loader(&ds, 2, 1, 1, LoaderState::default()), 3);
    let b = take(&mut loader(&ds, 2, 2, 1, LoaderState::default()), 3);
    assert_ne!(a, b);
    let images = |v: &[Batch]| v.iter().map(|b| b.images.clone()).collect::<Vec<_>>();
    assert_ne!(images(&a), images(&b));
}

#[test]
fn a_decode_error_in_a_worker_surfaces_in_next() {
    let (_dir, ds) = seven();
    let broken = ds.sample(3).unwrap().image.clone();
    std::fs::write(&broken, b"\xFF\xD8 broken").unwrap();
    let mut l = loader(&ds, 7, 0, 2, LoaderState::default());
    for _ in 0..2 {
        let err = l.next().unwrap_err();
        assert!(
            matches!(err, DataError::Decode { .. }) && names(&err, &broken),
            "{err}"
        );
    }
    assert_eq!(
        l.state(),
        LoaderState {
            epoch: 2,
            position: 0
        }
    );
}

#[test]
fn dropping_a_loader_with_full_queues_returns() {
    let (_dir, ds) = seven();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ds2 = ds.clone();
    std::thread::spawn(move || {
        let mut l = loader(&ds2, 2, 0, 3, LoaderState::default());
        l.next().unwrap();
        std::thread::sleep(Duration::from_millis(200)); // let the workers fill their queues
        drop(l);
        drop(loader(&ds2, 3, 0, 2, LoaderState::default())); // dropped before any batch
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("dropping the loader hangs");
}

#[test]
fn depth_batches_carry_depth() {
    let dir = tempdir();
    write_nyud(dir.path(), 3, 0, 5).unwrap();
    let ds = Arc::new(Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap());
    let (b, _wait) = loader(&ds, 3, 0, 2, LoaderState::default()).next().unwrap();
    assert!(b.labels.is_none());
    let depth = b.depth.unwrap();
    assert_eq!(depth.len(), 3 * 24 * 32);
    assert!(depth.iter().all(|&d| d == 0.0 || (0.5..10.0).contains(&d)));
    assert!(depth.iter().any(|&d| d > 0.0));
}

#[test]
fn bad_loader_arguments_are_errors() {
    let (_dir, ds) = seven();
    let cfg = AugmentConfig::new((8, 8));
    let start = LoaderState::default();
    for batch in [0, 8] {
        let err = Loader::new(ds.clone(), cfg.clone(), batch, 0, 1, start)
            .err()
            .unwrap();
        assert!(matches!(err, DataError::Invalid(_)), "{err}");
    }
    let zero_crop = AugmentConfig::new((0, 8));
    assert!(Loader::new(ds.clone(), zero_crop, 2, 0, 1, start).is_err());
    assert!(
        Loader::new(ds.clone(), cfg, 7, 0, 0, start).is_ok(),
        "0 workers means one"
    );
}

#[test]
fn batches_stack_examples_of_one_size_only() {
    let (_dir, ds) = seven();
    let cfg = AugmentConfig::new((8, 8));
    let example = |i: usize| {
        let s = ds.load(i, None).unwrap();
        rfnc_data::augment::eval_example(&s, &cfg)
    };
    let same = |i: usize| example(i).padded(96, 96).unwrap();
    let b = Batch::from_examples(vec![same(0), same(1)]).unwrap();
    assert_eq!(
        (b.samples, b.height, b.width, b.images.len()),
        (vec![0, 1], 96, 96, 2 * 3 * 96 * 96)
    );
    assert!(Batch::from_examples(vec![]).is_err());
    let other_size = example(1).padded(90, 96).unwrap();
    assert!(Batch::from_examples(vec![same(0), other_size]).is_err());
    let mut depth = same(1);
    depth.depth = depth
        .labels
        .take()
        .map(|l| l.into_iter().map(|v| v as f32).collect());
    assert!(Batch::from_examples(vec![same(0), depth]).is_err());
}
