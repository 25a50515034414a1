//! Shared by the kernel test files: a connected [`Netlink`] inside a test
//! namespace.

use flannel_netlink::Netlink;
use flannel_testutil::netns::NetNs;
use std::future::Future;
use std::time::Duration;

/// Runs `f` with a connected [`Netlink`] on a current-thread runtime inside
/// `ns`.
pub fn with_netlink<F, Fut>(ns: &NetNs, f: F)
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = ()>,
{
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (nl, conn) = Netlink::connect().unwrap();
            tokio::spawn(conn);
            tokio::time::timeout(Duration::from_secs(60), f(nl))
                .await
                .expect("test body timed out");
        })
    })
}
