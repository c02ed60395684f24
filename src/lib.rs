//! confluence-auth-operator: Confluence Cloud OAuth credentials as Kubernetes resources.
//!
//! The path of a token: `crd` (what users ask for) → `validation` (is the spec sound) →
//! `vault` (the encrypted token set at rest).

pub mod config;
pub mod crd;
pub mod duration;
pub mod telemetry;
pub mod validation;
pub mod vault;
