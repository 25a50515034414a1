//! Shared by the rules test files: a fresh namespace per test and a way to
//! run the packet-filter tools inside it.

use flannel_testutil::netns::NetNs;
use std::future::Future;
use std::process::Command;

/// Runs `f` on a thread inside a fresh namespace with a current-thread
/// tokio runtime.
pub fn in_netns<F, Fut>(hint: &str, f: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    let ns = NetNs::new(hint).expect("create a network namespace (needs root)");
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f());
    });
}

/// Runs a command (in the calling thread's namespace) and returns stdout;
/// panics with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes, by its handle, the `ip flannel-ipv4 postrtg` rule whose line in
/// `listing` (`nft -a list chain ...`) contains `needle` and a `!=`.
pub fn nft_delete_negated_postrtg_rule(listing: &str, needle: &str) {
    let handle = listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("!="))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no `!=` rule with {needle:?} in:\n{listing}"))
        .trim()
        .to_string();
    sh(&[
        "nft",
        "delete",
        "rule",
        "ip",
        "flannel-ipv4",
        "postrtg",
        "handle",
        &handle,
    ]);
}
