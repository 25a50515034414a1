//! strongSwan's charon for the ipsec tests: a private `strongswan.conf`
//! (its own VICI socket and log) and a wrapper script to start it with.
//!
//! charon writes `/var/run/charon.pid` and refuses to start when another
//! charon holds it, so several charons on one machine (one per netns host)
//! each get a private mount namespace with a fresh `/run`
//! (`unshare -m` + tmpfs). With `libipsec`, charon's `kernel-libipsec`
//! plugin carries ESP in userspace (a TUN device) for kernels without ESP.

use std::path::{Path, PathBuf};

use crate::TestUtilError;

/// Debian's charon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// One charon's files.
#[derive(Debug, Clone)]
pub struct CharonFiles {
    /// The `strongswan.conf`.
    pub conf: PathBuf,
    /// The executable to start: sets `STRONGSWAN_CONF`, unshares the mount
    /// namespace and execs charon (for `--charon-executable-path`).
    pub wrapper: PathBuf,
    /// `unix://<dir>/charon.vici`.
    pub uri: String,
    /// charon's log file.
    pub log: PathBuf,
}

impl CharonFiles {
    /// Writes the files into `dir`; fails naming the Debian packages when
    /// charon is not installed.
    pub fn create(dir: &Path, libipsec: bool) -> Result<CharonFiles, TestUtilError> {
        if !Path::new(CHARON).is_file() {
            return Err(TestUtilError::io(
                format!("looking for {CHARON}"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "strongSwan's charon is not installed: apt-get install strongswan-charon \
                     strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
                     libstrongswan-extra-plugins",
                ),
            ));
        }
        let io = |what: &str, e| TestUtilError::io(format!("{what} in {}", dir.display()), e);
        std::fs::create_dir_all(dir).map_err(|e| io("creating the charon directory", e))?;
        let sock = dir.join("charon.vici");
        let log = dir.join("charon.log");
        let conf = dir.join("strongswan.conf");
        // Only the plugins flannel needs: the full Debian set takes minutes
        // to start under the VM's emulated CPU (test-vectors alone runs
        // every algorithm's self-test).
        let kernel = if libipsec {
            "kernel-libipsec kernel-netlink"
        } else {
            "kernel-netlink"
        };
        let text = format!(
            "charon {{\n    load_modular = no\n    load = random drbg nonce aes sha1 sha2 hmac kdf gcm gmp curve25519 openssl pem pkcs1 pubkey x509 {kernel} socket-default vici\n    plugins {{\n        vici {{\n            socket = unix://{sock}\n        }}\n    }}\n    filelog {{\n        test {{\n            path = {log}\n            default = 1\n            ike = 2\n        }}\n    }}\n}}\n",
            sock = sock.display(),
            log = log.display()
        );
        std::fs::write(&conf, text).map_err(|e| io("writing strongswan.conf", e))?;
        let wrapper = dir.join("charon");
        let script = format!(
            "#!/bin/sh\nexport STRONGSWAN_CONF={}\nexec unshare -m sh -c 'mount -t tmpfs tmpfs /run && exec {CHARON}'\n",
            conf.display()
        );
        std::fs::write(&wrapper, script).map_err(|e| io("writing the charon wrapper", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("making the charon wrapper executable", e))?;
        Ok(CharonFiles {
            conf,
            wrapper,
            uri: format!("unix://{}", sock.display()),
            log,
        })
    }

    /// `swanctl <args> --uri <uri>`'s output (stdout and stderr).
    pub fn swanctl(&self, args: &[&str]) -> String {
        match std::process::Command::new("swanctl")
            .args(args)
            .args(["--uri", &self.uri])
            .output()
        {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("swanctl failed to run ({e}): apt-get install strongswan-swanctl"),
        }
    }
}
