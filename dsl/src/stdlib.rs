//! The standard library, written in `.rfn` and shipped inside the compiler.

const MODULES: &[(&str, &str)] = &[
    ("crp", include_str!("../std/crp.rfn")),
    ("fusion", include_str!("../std/fusion.rfn")),
    ("rcu", include_str!("../std/rcu.rfn")),
    ("refinenet", include_str!("../std/refinenet.rfn")),
    ("resnet", include_str!("../std/resnet.rfn")),
];

/// The source of the standard module `std.NAME`, given its `NAME`.
pub fn source(name: &str) -> Option<&'static str> {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

pub fn module_names() -> impl Iterator<Item = &'static str> {
    MODULES.iter().map(|(n, _)| *n)
}

/// The standard module that defines block `name`, for "did you forget an import" hints.
pub fn module_defining(name: &str) -> Option<&'static str> {
    let needle = format!("block {name}(");
    MODULES
        .iter()
        .find(|(_, text)| text.contains(&needle))
        .map(|(n, _)| *n)
}
