//! Atomic file output: write to a temporary file in the same folder, flush it to disk, then
//! rename it over the target, so an interrupted write never leaves a half-written file in
//! place of a good one. Missing parent folders are created.

use std::io::Write;
use std::path::Path;

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    // Temporary files are private (0600); the result is an ordinary file (0644).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes a directory of files so that it is never seen half-written: the files go to a new
/// temporary directory next to `dir`, which then replaces `dir` (the old one is moved aside
/// first and deleted after). An existing `dir` is replaced only when `replaceable`
/// says it may be (e.g. it holds an earlier bundle), so nothing else a user keeps there is
/// lost; otherwise the error says why.
pub fn write_dir_atomically(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    replaceable: impl Fn(&Path) -> bool,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let parent = match dir.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "not a directory name"))?
        .to_string_lossy()
        .into_owned();
    if dir.exists() && !replaceable(dir) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "it exists and is not an rfnc bundle; choose another directory or remove it",
        ));
    }
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(parent)?;
    for (relative, bytes) in files {
        let path = tmp.path().join(relative);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut file = std::fs::File::create(&path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    if !dir.exists() {
        // `tmp` removes the staged files if the rename fails.
        std::fs::rename(tmp.path(), dir)?;
        let _ = tmp.keep();
        return Ok(());
    }
    // Move the old directory aside, the new one in, then delete the old one; on failure the
    // old one is put back and the staged files are removed.
    let old = tempfile::Builder::new()
        .prefix(&format!(".{name}.old-"))
        .tempdir_in(parent)?;
    std::fs::remove_dir(old.path())?;
    std::fs::rename(dir, old.path())?;
    if let Err(e) = std::fs::rename(tmp.path(), dir) {
        let _ = std::fs::rename(old.path(), dir);
        return Err(e);
    }
    let _ = tmp.keep();
    let _ = std::fs::remove_dir_all(old.path());
    Ok(())
}
