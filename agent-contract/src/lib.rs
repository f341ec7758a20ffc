//! What the vaultkeeper webhook and agent exchange, declared once: the agent's configuration and
//! its validation ([`config`]), the pod annotation names that produce it ([`annotations`]), and
//! the duration syntax users write ([`duration`], also used by the CRDs), and the Go-template text
//! and builtins both the agent and the operator accept ([`template_text`], [`template_funcs`]).
//!
//! serde and gtmpl only: no kube, no k8s-openapi, no tokio. The agent depends on it and stays small; the
//! webhook runs [`AgentConfig::parse`] — the agent's own check — on every configuration before it
//! admits a pod, so a pod is never admitted with a configuration the agent refuses at start.

pub mod annotations;
pub mod config;
pub mod duration;
pub mod template_funcs;
pub mod template_text;

pub use config::{
    AGENT_CONFIG_ENV, AGENT_CONFIG_VERSION, AgentConfig, AgentMode, AgentSecret, ConfigError, Rule,
    Violation,
};
