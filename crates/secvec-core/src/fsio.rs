//! Durable file writes: the one `write_atomic` that adapters, checkpoints, the evaluation command
//! and the experiment runner all use.

use std::io::Write;
use std::path::Path;

use crate::error::{CoreError, Result};

/// Writes `bytes` to `path` so that a reader (or a process killed at any moment) sees either the
/// old file or the whole new one: the bytes go to `<path>.tmp`, are flushed to disk (`fsync`),
/// and the temporary file is renamed over `path`; the folder is then synced so that the rename
/// itself survives a crash (best effort: not every platform can sync a folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| CoreError::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| CoreError::io(tmp, e))
    })
}

/// [`write_atomic`] for a writer that produces the file itself (streamed, e.g. a large
/// safetensors file never held in memory whole): `write` creates `<path>.tmp`; it is then
/// synced, renamed over `path`, and the folder synced.
pub fn replace_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| CoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("secvec-fsio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.json");
        write_atomic(&path, b"first, longer content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.join("x.json.tmp").exists());
        // A folder that does not exist is an error naming the temporary file, not a panic.
        let err = write_atomic(&dir.join("missing/y.json"), b"z").unwrap_err();
        assert!(err.to_string().contains("y.json.tmp"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
