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
