//! Reading and atomically writing `subnet.env`.
//!
//! The text itself is [`flannel_core::subnet_env`]; this module does the file
//! I/O the way Go flannel does it (`renameio`): a temporary file in the same
//! directory, fsync, rename over the target, mode 0644 whatever the umask, the
//! parent directory created 0755 when missing. A reader therefore sees either
//! the old file or the new one, never a torn write.

use flannel_core::subnet_env::{EnvFile, SubnetEnv};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// A `subnet.env` that could not be read or written; names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubnetFileError {
    /// Writing failed; the previous file (if any) is untouched.
    #[error("failed to write subnet file {path}: {source}")]
    Write {
        /// The target path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading failed for another reason than the file not existing.
    #[error("failed to read subnet file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Writes `env` to `path` atomically with mode 0644.
pub fn write_subnet_env(path: &Path, env: &SubnetEnv) -> Result<(), SubnetFileError> {
    write_atomic(path, env.render().as_bytes(), 0o644).map_err(|source| SubnetFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path` tolerantly (see [`EnvFile::parse`]); a missing file is an
/// empty one, as for a first start.
pub fn read_subnet_env(path: &Path) -> Result<EnvFile, SubnetFileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(EnvFile::parse(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EnvFile::default()),
        Err(source) => Err(SubnetFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsynced and renamed into place, with exactly `mode` (the umask does not
/// apply). The parent directory is created with mode 0755 if missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new().recursive(true).mode(0o755).create(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // `mode` at creation is filtered by the umask; set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.72.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ip_masq: true,
        }
    }

    #[test]
    fn writes_exact_bytes_with_0644_despite_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        // A restrictive umask must not leak into the file mode. (umask is
        // process-wide; this test only reads the resulting mode.)
        write_subnet_env(&path, &env()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
        let back = read_subnet_env(&path).unwrap();
        assert_eq!(
            back.previous_subnet().0,
            Some("10.5.72.0/24".parse().unwrap())
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn replaces_atomically_and_fixes_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_subnet_env(&path, &env()).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .starts_with("FLANNEL_NETWORK=")
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
    }

    #[test]
    fn missing_file_reads_empty_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_subnet_env(&dir.path().join("nope.env")).unwrap(),
            EnvFile::default()
        );
        // A directory in place of the file cannot be replaced by rename.
        let blocker = dir.path().join("subnet.env");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), "").unwrap();
        let err = write_subnet_env(&blocker, &env()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "failed to write subnet file {}: ",
                blocker.display()
            )),
            "{err}"
        );
        assert!(blocker.join("x").exists(), "no state lost");
        let err = read_subnet_env(&blocker).unwrap_err().to_string();
        assert!(err.starts_with("failed to read subnet file"), "{err}");
    }
}
