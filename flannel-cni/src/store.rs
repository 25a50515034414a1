//! The saved delegate configs: `<dataDir>/<containerID>`, written on ADD and
//! read back on DEL (removed once the delegate's DEL succeeded, so a retried
//! DEL can still clean up), so DEL needs neither `subnet.env` nor the config
//! that was current at ADD time.
//!
//! Writes are atomic (a hidden temporary file in the same directory, fsynced,
//! then renamed), mode 0600, in a directory created with mode 0700. The
//! temporary name starts with `.`, which a container ID cannot (the CNI
//! runtime rules require an alphanumeric first character), so it never
//! shadows a real entry.

use crate::error::{PathError, StoreError};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The path of the saved config for `container_id` (Go's `filepath.Join`).
pub fn entry_path(data_dir: &str, container_id: &str) -> PathBuf {
    Path::new(data_dir).join(container_id)
}

/// Saves `bytes` as `<data_dir>/<container_id>`. Errors read like Go's
/// (`mkdir <dir>: permission denied`, `open <path>: ...`).
pub fn save(data_dir: &str, container_id: &str, bytes: &[u8]) -> Result<(), StoreError> {
    if data_dir.is_empty() {
        // Go's os.MkdirAll("") fails; keep the same outcome.
        const ENOENT: i32 = 2;
        let enoent = std::io::Error::from_raw_os_error(ENOENT);
        return Err(PathError::new("mkdir", "", enoent).into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| PathError::new("mkdir", data_dir, e))?;
    let path = entry_path(data_dir, container_id);
    let tmp = entry_path(
        data_dir,
        &format!(".{container_id}.tmp-{}", std::process::id()),
    );
    let tmp_s = tmp.display().to_string();
    let result = (|| -> Result<(), StoreError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| PathError::new("open", &tmp_s, e))?;
        f.write_all(bytes)
            .map_err(|e| PathError::new("write", &tmp_s, e))?;
        f.sync_all()
            .map_err(|e| PathError::new("sync", &tmp_s, e))?;
        fs::rename(&tmp, &path).map_err(|source| StoreError::Rename {
            from: tmp_s.clone(),
            to: path.display().to_string(),
            source,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads the saved config: `Ok(None)` when there is none.
pub fn read(data_dir: &str, container_id: &str) -> Result<Option<Vec<u8>>, PathError> {
    let path = entry_path(data_dir, container_id);
    let shown = path.display().to_string();
    let mut f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PathError::new("open", shown, e)),
    };
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut buf).map_err(|e| PathError::new("read", shown, e))?;
    Ok(Some(buf))
}

/// Removes the saved config (after a successful DEL); errors are ignored, as
/// upstream does: the entry is only a cleanup aid by then.
pub fn remove(data_dir: &str, container_id: &str) {
    let _ = fs::remove_file(entry_path(data_dir, container_id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn save_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let data = data.to_str().unwrap();
        assert_eq!(read(data, "c1").unwrap(), None);
        save(data, "c1", b"{}").unwrap();
        save(data, "c1", b"{\"x\":1}").unwrap();
        assert_eq!(
            read(data, "c1").unwrap().as_deref(),
            Some(&b"{\"x\":1}"[..])
        );
        let meta = fs::metadata(entry_path(data, "c1")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = fs::metadata(data).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o077, 0);
        assert_eq!(
            fs::read_dir(data).unwrap().count(),
            1,
            "no temporary file left"
        );
        remove(data, "c1");
        remove(data, "c1");
        assert_eq!(read(data, "c1").unwrap(), None);
        // an ID with dots and dashes is a plain file name
        save(data, "a.b-c_d", b"1").unwrap();
        assert!(read(data, "a.b-c_d").unwrap().is_some());
    }

    #[test]
    fn read_errors_other_than_missing_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        fs::create_dir(dir.path().join("cid")).unwrap();
        assert_eq!(
            read(d, "cid").unwrap_err().to_string(),
            format!("read {d}/cid: is a directory")
        );
        assert_eq!(
            save("", "cid", b"").unwrap_err().to_string(),
            "mkdir : no such file or directory"
        );
    }
}
