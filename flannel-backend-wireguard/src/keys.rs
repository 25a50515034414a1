//! WireGuard keys: the 32-byte [`Key`] (private, public or pre-shared),
//! parsed and printed in base64 exactly as Go's `wgtypes` does, and the
//! private key file (`/run/flannel/wgkey` or `WIREGUARD_KEY_FILE`).
//!
//! Secrets are wiped from memory when dropped and never printed: [`Key`]'s
//! `Debug` shows nothing of the key, and errors name the file, never its
//! content.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The default private key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// The environment variable that overrides [`DEFAULT_KEY_FILE`].
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// A 32-byte WireGuard key, wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a key did not parse, in `wgtypes.ParseKey`'s words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not standard base64 (Go's `illegal base64 data at input byte N`).
    #[error("wgtypes: failed to parse base64-encoded key: illegal base64 data at input byte {0}")]
    Base64(usize),
    /// Decoded to other than 32 bytes.
    #[error("wgtypes: incorrect key size: {0}")]
    Size(usize),
}

/// Errors of the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("{action} the WireGuard private key file {path}: {source}")]
    Io {
        /// What was being done (`reading`, `creating`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a key (the content itself is not shown).
    #[error("the WireGuard private key file {path} does not hold a key: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
    },
}

impl Key {
    /// The key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses standard base64 as `wgtypes.ParseKey` does: carriage returns
    /// and newlines anywhere are ignored, anything else must be exact.
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        let bytes = go_std_base64(s).map_err(KeyError::Base64)?;
        let len = bytes.len();
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Size(len))?;
        Ok(Key(arr))
    }

    /// Standard base64 with padding (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A new random private key, clamped as Curve25519 wants it (what
    /// `wgtypes.GeneratePrivateKey` returns).
    pub fn generate_private() -> Key {
        let mut k = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        let key = Key(k);
        k.zeroize();
        key
    }

    /// The public key of this private key.
    pub fn public_key(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }
}

/// Go's `base64.StdEncoding.DecodeString` (after it drops `\r` and `\n`):
/// the decoded bytes, or the input offset Go reports as corrupt.
fn go_std_base64(s: &str) -> Result<Vec<u8>, usize> {
    fn value(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let src = s.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    // Skips newlines, returning the next byte and its offset.
    let next = |si: &mut usize| -> Option<(usize, u8)> {
        while *si < src.len() && (src[*si] == b'\n' || src[*si] == b'\r') {
            *si += 1;
        }
        let at = *si;
        let c = *src.get(at)?;
        *si += 1;
        Some((at, c))
    };
    loop {
        let mut quantum = [0u8; 4];
        let mut j = 0;
        let mut quantum_start = si;
        while j < 4 {
            let Some((at, c)) = next(&mut si) else {
                if j == 0 {
                    return Ok(out);
                }
                // An incomplete quantum at the end (padding is required).
                return Err(si - j);
            };
            if j == 0 {
                quantum_start = at;
            }
            if c == b'=' {
                // Padding: only in place of the 3rd and 4th characters.
                match j {
                    0 | 1 => return Err(at),
                    2 => match next(&mut si) {
                        None => return Err(src.len()),
                        Some((_, b'=')) => {}
                        Some((at2, _)) => return Err(at2 - 1),
                    },
                    _ => {}
                }
                // Nothing but newlines may follow.
                if let Some((at3, _)) = next(&mut si) {
                    return Err(at3);
                }
                let _ = quantum_start;
                let n = if j == 2 { 1 } else { 2 };
                let v = (u32::from(quantum[0]) << 18)
                    | (u32::from(quantum[1]) << 12)
                    | (u32::from(quantum[2]) << 6);
                let bytes = v.to_be_bytes();
                out.extend_from_slice(&bytes[1..1 + n]);
                return Ok(out);
            }
            match value(c) {
                Some(v) => quantum[j] = v,
                None => return Err(at),
            }
            j += 1;
        }
        let v = (u32::from(quantum[0]) << 18)
            | (u32::from(quantum[1]) << 12)
            | (u32::from(quantum[2]) << 6)
            | u32::from(quantum[3]);
        out.extend_from_slice(&v.to_be_bytes()[1..]);
    }
}

/// The key file path: `WIREGUARD_KEY_FILE` when set (and not empty),
/// otherwise [`DEFAULT_KEY_FILE`].
pub fn key_file_path(env: Option<String>) -> PathBuf {
    env.filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

/// Loads the private key from `path`, or, when the file does not exist,
/// generates one and writes it as Go does: parent directories created
/// (0755), the file mode 0400, the base64 text without a newline. Returns
/// the key and whether it was generated.
pub fn load_or_generate(path: &Path) -> Result<(Key, bool), KeyFileError> {
    let io = |action, source| KeyFileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(mut bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            bytes.zeroize();
            let mut text = text;
            // Surrounding spaces, as an editor may leave them; newlines
            // anywhere are ignored by the decoder itself.
            let parsed = Key::parse(text.trim_matches(|c| c == ' ' || c == '\t'));
            text.zeroize();
            parsed
                .map(|k| (k, false))
                .map_err(|source| KeyFileError::Invalid {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Key::generate_private();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| io("creating the directory of", e))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(path)
                .map_err(|e| io("creating", e))?;
            // The mode given to open() is filtered by the umask: set it.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o400))
                .map_err(|e| io("setting the mode of", e))?;
            let mut text = key.to_base64();
            let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
            text.zeroize();
            written.map_err(|e| io("writing", e))?;
            Ok((key, true))
        }
        Err(e) => Err(io("reading", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn base64_like_go() {
        let k = Key::parse("hT3T4ki6YKnhK5xVH+JB8mGlNGcXHp9fERPNWubQNVI=").unwrap();
        assert_eq!(
            k.to_base64(),
            "hT3T4ki6YKnhK5xVH+JB8mGlNGcXHp9fERPNWubQNVI="
        );
        // Newlines are ignored anywhere.
        assert_eq!(
            Key::parse("hT3T4ki6YKnhK5xVH+JB8mGlNGcXHp9f\nERPNWubQNVI=\n").unwrap(),
            k
        );
        assert_eq!(go_std_base64("not a key"), Err(3));
        assert_eq!(go_std_base64("abc"), Err(0));
        assert_eq!(go_std_base64("abcdab"), Err(4));
        assert_eq!(go_std_base64("a==="), Err(1));
        assert_eq!(go_std_base64("ab=c"), Err(2));
        assert_eq!(go_std_base64("ab==x"), Err(4));
        assert_eq!(go_std_base64("ab=="), Ok(vec![0x69]));
        assert_eq!(go_std_base64("abc="), Ok(vec![0x69, 0xb7]));
        assert_eq!(go_std_base64(""), Ok(vec![]));
        assert_eq!(Key::parse("AAAA"), Err(KeyError::Size(3)));
        assert_eq!(format!("{k:?}"), "Key(<redacted>)");
    }

    #[test]
    fn public_key_matches_wireguard() {
        // The example pair from wg(8)-generated keys.
        let private = Key::parse("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
        let g = Key::generate_private();
        assert_eq!(g.as_bytes()[0] & 7, 0);
        assert_eq!(g.as_bytes()[31] & 0xc0, 0x40);
    }

    #[test]
    fn key_file_generated_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/wgkey");
        let (k1, new1) = load_or_generate(&path).unwrap();
        assert!(new1);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, k1.to_base64(), "base64 without a newline");
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o755);
        let (k2, new2) = load_or_generate(&path).unwrap();
        assert!(!new2);
        assert_eq!(k1, k2);
        // A file written by hand with a trailing newline.
        let other = dir.path().join("wgkey2");
        std::fs::write(&other, format!("{}\n", k1.to_base64())).unwrap();
        assert_eq!(load_or_generate(&other).unwrap().0, k1);
        // A broken file: the error names the file, never its content.
        std::fs::write(&other, "secret-garbage!").unwrap();
        let e = load_or_generate(&other).unwrap_err().to_string();
        assert!(e.contains("wgkey2") && !e.contains("secret"), "{e}");
        assert_eq!(key_file_path(None), PathBuf::from(DEFAULT_KEY_FILE));
        assert_eq!(
            key_file_path(Some(String::new())),
            PathBuf::from(DEFAULT_KEY_FILE)
        );
        assert_eq!(key_file_path(Some("/x/k".into())), PathBuf::from("/x/k"));
    }
}
