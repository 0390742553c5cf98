//! `rfnc train` end to end on synthetic datasets (written by `rfnc dataset`): the tiny
//! network learns the shapes, a resumed run reproduces an uninterrupted one, Ctrl-C leaves a
//! checkpoint to resume, and bad data, bad work dirs, divergence and a full disk are clear
//! errors that lose nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// `rfnc train examples/tiny.rfn` on the VOC-layout shapes with the test settings.
fn train_args(data: &Path, work: &Path, iters: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "examples/tiny.rfn",
        "--input",
        "8x3x64x64",
        "-D",
        "dropout=0.0",
        "--dataset",
        "voc",
        "--data-root",
        data.to_str().unwrap(),
        "--work-dir",
        work.to_str().unwrap(),
        "--lr",
        "0.02",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--iters".into());
    args.push(iters.to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The records of `log.jsonl` of a kind (`train` or `val`).
fn records(work: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(work.join("log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

fn losses(work: &Path) -> Vec<(u64, f64)> {
    records(work, "train")
        .iter()
        .map(|r| (r["iter"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn tiny_learns_the_synthetic_shapes() {
    let (_d, data) = dataset("voc", 64, 16);
    let work = tempfile::tempdir().unwrap();
    let args = train_args(
        &data,
        work.path(),
        200,
        &[
            "--checkpoint-every",
            "50",
            "--keep",
            "2",
            "--val-every",
            "100",
        ],
    );
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let val = records(work.path(), "val");
    assert_eq!(val.len(), 2, "validations at 100 and 200");
    let miou = val[1]["value"].as_f64().unwrap();
    eprintln!("tiny on the synthetic shapes: mean IoU {miou:.4} after 200 iterations");
    assert!(miou >= 0.7, "mean IoU {miou} on the held-out split");
    let text = stdout(&out);
    assert!(text.contains("finished after 200 iterations"), "{text}");
    assert!(text.contains("best mean_iou"), "{text}");
    // The last two periodic checkpoints and the best one; the curves.
    let mut names: Vec<String> = std::fs::read_dir(work.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "best.safetensors",
            "iter-00000150.safetensors",
            "iter-00000200.safetensors"
        ]
    );
    assert!(is_png(&work.path().join("loss.png")) && is_png(&work.path().join("val.png")));
    // A checkpoint is a weights file for `rfnc run`.
    let best = work.path().join("checkpoints/best.safetensors");
    let out = rfnc(&[
        "run",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "-D",
        "dropout=0.0",
        "--weights",
        best.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A run resumed from its checkpoint at iteration 6 computes exactly the losses and the
/// weights of the same run uninterrupted (same data order, augmentation, dropout masks).
#[test]
fn a_resumed_run_reproduces_the_uninterrupted_one() {
    let (_d, data) = dataset("voc", 24, 4);
    let whole = tempfile::tempdir().unwrap();
    let common = [
        "--checkpoint-every",
        "6",
        "--keep",
        "5",
        "--no-val",
        "-D",
        "dropout=0.3",
        "--batch",
        "4",
    ];
    let out = rfnc(&train_args(&data, whole.path(), 12, &common));
    assert!(out.status.success(), "{}", stderr(&out));

    // The same run stopped after iteration 6: its work dir as it was then (the later
    // checkpoint gone; the log still holds later lines, as after a crash).
    let cut = tempfile::tempdir().unwrap();
    copy_dir(whole.path(), cut.path());
    std::fs::remove_file(cut.path().join("checkpoints/iter-00000012.safetensors")).unwrap();
    let out = rfnc(&train_args(
        &data,
        cut.path(),
        12,
        &[&common[..], &["--resume"]].concat(),
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from"), "{}", stderr(&out));
    assert_eq!(losses(cut.path()), losses(whole.path()));
    assert_eq!(losses(whole.path()).len(), 12);
    let read =
        |dir: &Path| std::fs::read(dir.join("checkpoints/iter-00000012.safetensors")).unwrap();
    assert!(
        read(cut.path()) == read(whole.path()),
        "the final checkpoints differ"
    );

    // Resuming with other settings is refused: the checkpoint is of another program.
    let out = rfnc(&train_args(
        &data,
        cut.path(),
        12,
        &["--resume", "--batch", "4", "--no-val", "--momentum", "0.5"],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checkpoint of another program"),
        "{}",
        stderr(&out)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Ctrl-C: a checkpoint of where the run stood, exit status 130, and `--resume` finishes.
#[test]
fn an_interrupted_run_checkpoints_and_resumes() {
    let (_d, data) = dataset("voc", 16, 4);
    let work = tempfile::tempdir().unwrap();
    let args = train_args(&data, work.path(), 100_000, &["--no-val", "--batch", "2"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rfnc"))
        .args(&args)
        .current_dir(root())
        .env("RFNC_CACHE_DIR", test_cache_dir())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line (training has started), then interrupt.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("iteration "));
    assert!(started, "no progress line");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{rest:?}");
    assert!(
        stdout(&out).contains("interrupted after"),
        "{}",
        stdout(&out)
    );
    let done = losses(work.path()).len() as u64;
    let checkpoint = work
        .path()
        .join(format!("checkpoints/iter-{done:08}.safetensors"));
    assert!(checkpoint.is_file(), "no checkpoint at iteration {done}");
    let out = rfnc(&train_args(
        &data,
        work.path(),
        done + 2,
        &["--no-val", "--batch", "2", "--resume"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(losses(work.path()).len() as u64, done + 2);
}

#[test]
fn a_diverging_run_names_the_iteration_and_the_last_checkpoint() {
    let (_d, data) = dataset("voc", 16, 4);
    let work = tempfile::tempdir().unwrap();
    let mut args = train_args(
        &data,
        work.path(),
        50,
        &["--no-val", "--batch", "2", "--checkpoint-every", "1"],
    );
    let lr = args.iter().position(|a| a == "0.02").unwrap();
    args[lr] = "1e6".into();
    let out = rfnc(&args);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("training diverged"), "{text}");
    assert!(text.contains("at iteration"), "{text}");
    assert!(
        text.contains("last good checkpoint") || text.contains("no checkpoint"),
        "{text}"
    );
}

#[test]
fn bad_data_is_a_clear_error_naming_the_file() {
    let (_d, data) = dataset("voc", 8, 2);
    let work = tempfile::tempdir().unwrap();
    let run = |work: &Path| rfnc(&train_args(&data, work, 4, &["--no-val", "--batch", "2"]));
    let ids: Vec<String> = std::fs::read_to_string(data.join("ImageSets/Segmentation/train.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // A truncated photo.
    let photo = data.join(format!("JPEGImages/{}.jpg", ids[0]));
    let bytes = std::fs::read(&photo).unwrap();
    std::fs::write(&photo, &bytes[..bytes.len() / 3]).unwrap();
    let out = run(work.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}.jpg", ids[0])),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
    std::fs::write(&photo, &bytes).unwrap();
    // A file the split names but the disk lacks.
    let label = data.join(format!("SegmentationClass/{}.png", ids[1]));
    std::fs::rename(&label, data.join("moved.png")).unwrap();
    let out = run(work.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}.png", ids[1])),
        "{}",
        stderr(&out)
    );
    std::fs::rename(data.join("moved.png"), &label).unwrap();
    // An empty split.
    std::fs::write(data.join("ImageSets/Segmentation/train.txt"), "").unwrap();
    let out = run(work.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("train.txt"), "{}", stderr(&out));
    // Depth data for a segmentation network.
    let (_n, nyud) = dataset("nyud", 4, 2);
    let out = rfnc(&[
        "train",
        "examples/tiny.rfn",
        "--dataset",
        "nyud_depth",
        "--data-root",
        nyud.to_str().unwrap(),
        "--work-dir",
        work.path().to_str().unwrap(),
        "--iters",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("depth dataset"), "{}", stderr(&out));
}

/// A work dir is one run's: another program's checkpoints are refused, and a new run is not
/// started over this one's.
#[test]
fn a_work_dir_holding_other_checkpoints_is_refused() {
    let (_d, data) = dataset("voc", 8, 2);
    let work = tempfile::tempdir().unwrap();
    let out = rfnc(&train_args(
        &data,
        work.path(),
        2,
        &["--no-val", "--batch", "2"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let again = rfnc(&train_args(
        &data,
        work.path(),
        2,
        &["--no-val", "--batch", "2"],
    ));
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--resume"), "{}", stderr(&again));
    let other = rfnc(&train_args(
        &data,
        work.path(),
        2,
        &["--no-val", "--batch", "2", "-D", "refine_width=4"],
    ));
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("another program"),
        "{}",
        stderr(&other)
    );
}

/// A checkpoint that cannot be written (here: a file size limit, as a full disk) is an
/// error, and the previous checkpoint survives intact.
#[test]
fn a_full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let (_d, data) = dataset("voc", 8, 2);
    let work = tempfile::tempdir().unwrap();
    let opts = ["--no-val", "--batch", "2", "--checkpoint-every", "1"];
    let out = rfnc(&train_args(&data, work.path(), 2, &opts));
    assert!(out.status.success(), "{}", stderr(&out));
    let previous = work.path().join("checkpoints/iter-00000002.safetensors");
    let before = std::fs::read(&previous).unwrap();
    // Continue to iteration 4 with files limited to 64 KiB: the compiled bundle is reused,
    // the checkpoint of iteration 3 (about a megabyte) cannot be written.
    let args = train_args(&data, work.path(), 4, &[&opts[..], &["--resume"]].concat());
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "ulimit -f 64; trap '' XFSZ; exec \"$RFNC\" {}",
        quoted.join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("RFNC", env!("CARGO_BIN_EXE_rfnc"))
        .env("RFNC_CACHE_DIR", test_cache_dir())
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("cannot write the checkpoint"), "{text}");
    assert!(text.contains("iter-00000003.safetensors"), "{text}");
    assert!(text.contains("previous checkpoint"), "{text}");
    assert_eq!(std::fs::read(&previous).unwrap(), before);
    assert!(!work
        .path()
        .join("checkpoints/iter-00000003.safetensors")
        .exists());
    // Without the limit the run continues from iteration 2.
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(losses(work.path()).len(), 4);
}

/// Depth: the NYUDv2 layout feeds `depth_gt`, validation reports rms (lower is better) and
/// it falls as the network trains.
#[test]
fn a_depth_network_trains_on_the_nyud_layout() {
    let (_d, data) = dataset("nyud", 32, 8);
    let work = tempfile::tempdir().unwrap();
    let out = rfnc(&[
        "train",
        "tests/programs/tiny_depth.rfn",
        "--input",
        "4x3x64x64",
        "--dataset",
        "nyud_depth",
        "--data-root",
        data.to_str().unwrap(),
        "--work-dir",
        work.path().to_str().unwrap(),
        "--iters",
        "60",
        "--lr",
        "1e-4",
        "--val-every",
        "30",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let val = records(work.path(), "val");
    assert_eq!(val.len(), 2);
    assert!(val.iter().all(|r| r["metric"] == "rms"));
    let rms: Vec<f64> = val.iter().map(|r| r["value"].as_f64().unwrap()).collect();
    assert!(rms[1] < rms[0], "rms {rms:?}");
    for figure in ["rel", "log10", "delta1", "delta2", "delta3"] {
        assert!(val[1]["figures"][figure].is_number(), "{figure}");
    }
    assert!(stdout(&out).contains("best rms"), "{}", stdout(&out));
}

/// `--init` takes what a file has (a pretrained backbone, say) and initialises the rest,
/// listing it; a tensor of the wrong shape is an error naming it.
#[test]
fn init_from_a_partial_file_lists_what_it_initialises() {
    let (_d, data) = dataset("voc", 8, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let f = file.to_str().unwrap();
    let out = rfnc(&["weights", "examples/tiny.rfn", "-o", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut weights = rfnc_runtime::load_weights(&file).unwrap();
    weights.tensors.retain(|name, _| !name.starts_with("head."));
    rfnc_runtime::save_weights(&file, &weights).unwrap();
    let work = dir.path().join("run");
    let out = rfnc(&train_args(
        &data,
        &work,
        1,
        &["--no-val", "--batch", "2", "--init", f],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("are not in"), "{}", stderr(&out));
    assert!(stderr(&out).contains("head.*"), "{}", stderr(&out));

    let (_, values) = weights.tensors["backbone.conv1.weight"].clone();
    let flat = vec![1, values.len() as u64];
    weights
        .tensors
        .insert("backbone.conv1.weight".into(), (flat, values));
    rfnc_runtime::save_weights(&file, &weights).unwrap();
    let out = rfnc(&train_args(
        &data,
        &dir.path().join("run2"),
        1,
        &["--no-val", "--batch", "2", "--init", f],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("backbone.conv1.weight"),
        "{}",
        stderr(&out)
    );
}

/// `--batch auto` takes the largest batch whose step fits the budget (recomputing first),
/// says what it chose, and refuses a budget not even a batch of 1 fits.
#[test]
fn batch_auto_fits_the_memory_budget() {
    let (_d, data) = dataset("voc", 64, 2);
    let dir = tempfile::tempdir().unwrap();
    let args = |work: &str, budget: &str| {
        let mut a = train_args(
            &data,
            &dir.path().join(work),
            1,
            &["--no-val", "--batch", "auto", "--memory-budget", budget],
        );
        let input = a.iter().position(|x| x == "8x3x64x64").unwrap();
        a[input] = "1x3x64x64".into();
        a
    };
    let out = rfnc(&args("a", "20MiB"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stderr(&out);
    let chosen: u64 = text
        .split("--batch auto chose ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(chosen > 1, "{text}");
    assert!(
        text.contains(&format!("training tiny.rfn: batch {chosen} of")),
        "{text}"
    );
    let out = rfnc(&args("b", "1MiB"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not even a batch of 1 fits"),
        "{}",
        stderr(&out)
    );
}
