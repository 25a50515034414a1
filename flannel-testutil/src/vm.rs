//! Kernel-only tests in a VM: this machine's kernel has no ipip, no ESP and
//! no WireGuard and cannot load modules, so tests that need them rerun their
//! test binary inside a qemu VM that boots Debian's stock kernel with the
//! host's root file system shared read-only (`scripts/vm-run.sh` in the
//! repository; the VM sees the same test binary, etcd and `ip` at the same
//! paths).
//!
//! The pattern: the kernel-only tests are `#[ignore]`d with a reason naming
//! the host test that runs them, and check [`in_vm`] first; one host test per
//! binary boots **one** VM for all of them:
//!
//! ```no_run
//! # use flannel_testutil::vm;
//! #[test]
//! fn kernel_tests_pass_in_the_vm() {
//!     vm::assert_tests_pass_in_vm("in_vm::", &[]);
//! }
//!
//! mod in_vm {
//!     #[test]
//!     #[ignore = "kernel-only: run inside the VM by kernel_tests_pass_in_the_vm"]
//!     fn ipip_device() {
//!         flannel_testutil::vm::require_vm();
//!         // ... ip link add flannel.ipip type ipip ...
//!     }
//! }
//! ```
//!
//! A boot costs 3–7 s under software emulation (KVM is unusable here), and
//! every process spawn inside is 5–10× slower than on the host: keep the
//! inner tests few and their timeouts generous.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::TestUtilError;

/// The variable set inside the VM run (value `1`).
pub const IN_VM_ENV: &str = "FLANNEL_IN_VM";

/// Overrides the harness script's path (default: `scripts/vm-run.sh` of this
/// repository).
pub const SCRIPT_ENV: &str = "FLANNEL_VM_RUN";

/// Whether this process runs inside the test VM.
pub fn in_vm() -> bool {
    std::env::var(IN_VM_ENV).is_ok_and(|v| v == "1")
}

/// Panics unless running inside the test VM: the first line of every
/// kernel-only test, so that running it on the host by hand (`--ignored`)
/// fails with a message saying how to run it instead of a kernel error.
pub fn require_vm() {
    assert!(
        in_vm(),
        "this test needs a kernel with ipip/ESP/WireGuard: it runs inside the test VM \
         (flannel_testutil::vm), started by the non-ignored test of the same binary"
    );
}

/// The harness script: `$FLANNEL_VM_RUN` or the repository's
/// `scripts/vm-run.sh`.
pub fn script_path() -> PathBuf {
    match std::env::var_os(SCRIPT_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vm-run.sh"),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Reruns `test_binary`'s ignored tests matching `filter` (a libtest
/// substring filter) inside one VM, with [`IN_VM_ENV`]`=1` and `env` set,
/// and returns its output. `RUST_TEST_THREADS` in `env` sets the inner
/// parallelism (the VM has 2 vCPUs).
///
/// Fails with [`TestUtilError::VmUnavailable`] naming what is missing (qemu,
/// busybox-static, the script) before starting anything.
pub fn run_tests_in_vm(
    test_binary: &Path,
    filter: &str,
    env: &[(&str, &str)],
) -> Result<Output, TestUtilError> {
    let script = script_path();
    if !script.is_file() {
        return Err(TestUtilError::VmUnavailable(format!(
            "the harness script {} does not exist (set {SCRIPT_ENV})",
            script.display()
        )));
    }
    if !on_path("qemu-system-x86_64") {
        return Err(TestUtilError::VmUnavailable(
            "qemu-system-x86_64 is not installed: install the Debian package qemu-system-x86 \
             (and busybox-static, kmod)"
                .into(),
        ));
    }
    if !Path::new("/bin/busybox").is_file() {
        return Err(TestUtilError::VmUnavailable(
            "/bin/busybox is missing: install the Debian package busybox-static".into(),
        ));
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--")
        .arg(test_binary)
        .arg(filter)
        .args(["--ignored", "--nocapture"])
        .env(IN_VM_ENV, "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .map_err(|e| TestUtilError::io(format!("running {}", script.display()), e))
}

/// How many tests an inner libtest run reported as passed, from its
/// `test result: ok. N passed; ...` line; `None` when the run did not end
/// with an ok result.
pub fn passed_count(stdout: &str) -> Option<usize> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("test result: "))?;
    let rest = line.strip_prefix("test result: ok. ")?;
    rest.split(' ').next()?.parse().ok()
}

/// Runs the current test binary's ignored tests matching `filter` in one VM
/// ([`run_tests_in_vm`]), prints the VM's output, and panics unless the run
/// succeeded and at least one test passed. Returns the VM's stdout.
pub fn assert_tests_pass_in_vm(filter: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("the current test binary's path");
    let started = std::time::Instant::now();
    let out = match run_tests_in_vm(&exe, filter, env) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "----- VM run of `{filter}` ({:.1} s, {}) -----\n{stdout}\n----- VM stderr -----\n{stderr}",
        started.elapsed().as_secs_f64(),
        out.status
    );
    assert!(
        out.status.success(),
        "the tests matching `{filter}` failed inside the VM ({}); their output is above",
        out.status
    );
    match passed_count(&stdout) {
        Some(n) if n > 0 => {}
        _ => panic!("no test matching `{filter}` passed inside the VM; the output is above"),
    }
    stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passed_tests() {
        let out =
            "running 2 tests\ntest a ... ok\n\ntest result: ok. 2 passed; 0 failed; 0 ignored\n";
        assert_eq!(passed_count(out), Some(2));
        assert_eq!(
            passed_count("test result: FAILED. 1 passed; 1 failed;"),
            None
        );
        assert_eq!(passed_count("running 0 tests\n"), None);
    }

    #[test]
    fn the_script_is_in_the_repository() {
        assert!(script_path().is_file(), "{}", script_path().display());
    }
}
