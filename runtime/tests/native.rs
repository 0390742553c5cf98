//! Native host code: the first CPU session of a bundle compiles and caches a shared library
//! for this CPU, later sessions open it, a damaged library is rebuilt, and with no cache
//! directory or no C compiler the JIT runs the same kernels. One test, because it sets the
//! process's environment.

mod common;

use common::*;
use rfnc_runtime::{load_bundle, Device, HostOrigin, LoadedBundle, Session};

fn run(loaded: &LoadedBundle) -> (HostOrigin, Vec<f32>, Vec<f32>) {
    let mut session = Session::new(loaded, Device::Cpu { threads: 2 }).unwrap();
    feed_inference(&mut session, 0);
    session.run().unwrap();
    let output = |name: &str| session.output(name).unwrap().as_f32().unwrap().to_vec();
    (session.host_origin().unwrap(), output("y"), output("z"))
}

fn set(vars: &[(&str, &str)]) {
    for (k, v) in vars {
        // SAFETY: this test binary runs this one test, so no other thread reads the
        // environment meanwhile.
        unsafe { std::env::set_var(k, v) };
    }
}

#[test]
fn host_code_is_compiled_once_cached_and_rebuilt_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    inference_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    set(&[("RFNC_CACHE_DIR", cache.path().to_str().unwrap())]);

    let (origin, y, z) = run(&loaded);
    assert_eq!(origin, HostOrigin::Compiled);
    let libraries: Vec<_> = std::fs::read_dir(cache.path().join("host"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect();
    assert_eq!(libraries.len(), 1, "{libraries:?}");

    let (origin, y2, z2) = run(&loaded);
    assert_eq!(origin, HostOrigin::Cached);
    assert_eq!((&y, &z), (&y2, &z2), "the cached library computes the same");

    // A truncated library fails its checksum and is compiled again.
    let bytes = std::fs::read(&libraries[0]).unwrap();
    std::fs::write(&libraries[0], &bytes[..bytes.len() / 2]).unwrap();
    let (origin, y3, _) = run(&loaded);
    assert_eq!(origin, HostOrigin::Compiled);
    assert_eq!(y, y3);
    assert_eq!(run(&loaded).0, HostOrigin::Cached);

    // Another bundle directory with the same host code opens the same library.
    let other = tempfile::tempdir().unwrap();
    inference_bundle(other.path());
    let (origin, y4, _) = run(&load_bundle(other.path()).unwrap());
    assert_eq!(
        origin,
        HostOrigin::Cached,
        "the same host.bc is the same library"
    );
    assert_eq!(y, y4);

    // No C compiler: the JIT, same results.
    let fresh = tempfile::tempdir().unwrap();
    set(&[
        ("RFNC_CACHE_DIR", fresh.path().to_str().unwrap()),
        ("CC", "/nonexistent/cc"),
    ]);
    let (origin, y5, z5) = run(&loaded);
    assert_eq!(origin, HostOrigin::Jit);
    assert_eq!((&y, &z), (&y5, &z5));

    // No cache directory at all: the JIT.
    set(&[
        ("CC", ""),
        ("RFNC_CACHE_DIR", ""),
        ("XDG_CACHE_HOME", ""),
        ("HOME", ""),
    ]);
    assert_eq!(run(&loaded).0, HostOrigin::Jit);
}
