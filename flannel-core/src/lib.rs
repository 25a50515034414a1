//! placeholder
pub mod config;
pub mod event;
pub mod gojson;
pub mod ip;
pub mod key;
pub mod lease;
