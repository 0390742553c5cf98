//! Weights files: corrupt and wrongly typed files are errors naming the file; tensors and
//! metadata round-trip.

use rfnc_runtime::{load_weights, WeightsError};

#[test]
fn corrupt_and_wrongly_typed_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let e = load_weights(&garbage).unwrap_err();
    assert!(matches!(e, WeightsError::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("garbage.safetensors"));

    let f64_file = dir.path().join("f64.safetensors");
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data).unwrap();
    std::fs::write(
        &f64_file,
        safetensors::serialize(vec![("x", view)], None).unwrap(),
    )
    .unwrap();
    let e = load_weights(&f64_file).unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `x` is F64; rfnc weights are F32"),
        "{e}"
    );

    let missing = load_weights(&dir.path().join("nope.safetensors")).unwrap_err();
    assert!(matches!(missing, WeightsError::Io { .. }));
    assert!(missing.to_string().contains("nope.safetensors"));
}

/// Tensors and metadata (a checkpoint's iteration, say) survive a save and a load.
#[test]
fn tensors_and_metadata_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut weights = rfnc_runtime::Weights::default();
    weights
        .tensors
        .insert("a.weight".into(), (vec![2, 1], vec![1.5, -2.0]));
    weights
        .metadata
        .insert("rfnc.iteration".into(), "12".into());
    rfnc_runtime::save_weights(&path, &weights).unwrap();
    assert_eq!(load_weights(&path).unwrap(), weights);
    weights.metadata.clear();
    rfnc_runtime::save_weights(&path, &weights).unwrap();
    assert_eq!(load_weights(&path).unwrap(), weights);
}

/// Input files hold f32 and i32 tensors (labels); other dtypes are refused by name.
#[test]
fn input_tensors_of_f32_and_i32_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.safetensors");
    let labels: Vec<u8> = [3i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let image: Vec<u8> = [0.5f32].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "labels",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1, 2], &labels)
                .unwrap(),
        ),
        (
            "image",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &image).unwrap(),
        ),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let tensors = rfnc_runtime::load_tensors(&path).unwrap();
    assert_eq!(tensors["labels"].as_i32(), Some(&[3, -1][..]));
    assert_eq!(tensors["labels"].shape, [1, 2]);
    assert_eq!(tensors["image"].as_f32(), Some(&[0.5][..]));
    let bytes = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![1], &bytes).unwrap();
    std::fs::write(
        &path,
        safetensors::serialize(vec![("x", view)], None).unwrap(),
    )
    .unwrap();
    let e = rfnc_runtime::load_tensors(&path).unwrap_err().to_string();
    assert!(
        e.contains("tensor `x` is F64; inputs are F32 or I32"),
        "{e}"
    );
}

/// A file that is not safetensors says so (and what it looks like), not "header too large".
#[test]
fn a_file_of_another_kind_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "model.pth",
            b"PK\x03\x04 a zip archive of pickles",
            "zip archive, as PyTorch's torch.save writes",
        ),
        (
            "old.pt",
            b"\x80\x02 a pickle with some length",
            "Python pickle",
        ),
        (
            "notes.txt",
            b"these are not weights at all",
            "does not start with a safetensors header",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = load_weights(&path).unwrap_err().to_string();
        assert!(
            e.contains(name) && e.contains("not a safetensors file"),
            "{e}"
        );
        assert!(e.contains(needle), "{e}");
    }
}
