//! placeholder
pub mod allocator;
pub mod env_file;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "local")]
pub mod local;
pub mod manager;
pub mod runner;
pub mod store;
