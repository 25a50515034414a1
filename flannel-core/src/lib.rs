//! placeholder
pub mod config;
pub mod gojson;
pub mod ip;
