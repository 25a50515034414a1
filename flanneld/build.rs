//! Records the git commit the binary is built from (`flanneld --version`).
//!
//! `FLANNELD_GIT_COMMIT` in the build environment wins (a release built from
//! a source tarball has no `.git`); otherwise `git rev-parse --short HEAD`;
//! without git or a repository, `unknown`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FLANNELD_GIT_COMMIT");
    let commit = match std::env::var("FLANNELD_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Rebuild when HEAD moves: HEAD itself (per worktree), the branch
            // it points at, and packed-refs (where a branch may live).
            for path in ["HEAD", "packed-refs"]
                .into_iter()
                .filter_map(|p| git(&["rev-parse", "--git-path", p]))
                .chain(
                    git(&["symbolic-ref", "-q", "HEAD"])
                        .and_then(|r| git(&["rev-parse", "--git-path", &r])),
                )
            {
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=FLANNELD_GIT_COMMIT={commit}");
}
