//! The vaultkeeper agent as a library: configuration, sources, templates and files. `main.rs` is
//! the binary; tests and fuzz targets use these modules directly.

pub mod agent;
pub mod config;
pub mod files;
pub mod log;
pub mod source;
pub mod state;
pub mod template;
