//! placeholder
pub mod allocator;
pub mod env_file;
