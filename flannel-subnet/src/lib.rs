//! placeholder
pub mod allocator;
pub mod env_file;
#[cfg(feature = "local")]
pub mod local;
pub mod manager;
pub mod store;
