//! Test control plane for confluence-auth-operator: an in-process Kubernetes API server
//! (`apiserver`) and an Atlassian OAuth 2.0 (3LO) stand-in (`atlassian`), used by the
//! operator's tests and by its `demo` subcommand. Never part of the operator's production path.

pub mod apiserver;
pub mod atlassian;
