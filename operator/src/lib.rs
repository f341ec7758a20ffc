//! The vaultkeeper operator as a library: the controllers, their pure planning steps and the
//! machinery around them. `main.rs` wires them into the binary; tests and fuzz targets use them directly.

pub mod certificate;
pub mod clock;
pub mod conditions;
pub mod config;
pub mod context;
pub mod digest;
pub mod dynamic_credential;
pub mod http;
pub mod identity;
pub mod leader;
pub mod lease_tokens;
pub mod managed;
pub mod metrics;
pub mod operator_key;
pub mod outage;
pub mod report;
pub mod restart;
pub mod retirement;
pub mod scope;
pub mod shards;
pub mod supervise;
pub mod template;
pub mod vault_api;
pub mod vault_secret;
pub mod webhook_tls;
