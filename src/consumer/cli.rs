//! The commands people type: `authorize` (print the consent link, optionally wait for Ready)
//! and `status` (one table of every credential). Both use the kubeconfig like kubectl does.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt as _};
use serde::Serialize;

use crate::config::{AuthorizeArgs, AuthorizeKind, OutputFormat, StatusArgs};
use crate::crd::conditions::{READY, REAUTHORIZATION_DUE};
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase};

/// How often `authorize --wait` looks at the resource again.
const POLL: Duration = Duration::from_millis(500);

/// Why a command did not succeed; the message is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The Kubernetes API refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The resource reached a phase that only a person can fix (Failed, Revoked).
    #[error("{kind}/{name} is {phase:?}: {message}")]
    Stuck {
        /// `installation` or `user`.
        kind: &'static str,
        /// The resource's name.
        name: String,
        /// Its phase.
        phase: Phase,
        /// The Ready condition's message.
        message: String,
    },
    /// `--timeout` passed before the resource became Ready.
    #[error("{kind}/{name} is not Ready after {waited:?} (phase {phase}): {message}")]
    Timeout {
        /// `installation` or `user`.
        kind: &'static str,
        /// The resource's name.
        name: String,
        /// How long the command waited.
        waited: Duration,
        /// The last phase seen.
        phase: String,
        /// The Ready condition's message.
        message: String,
    },
    /// JSON output could not be written.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn phase_name(phase: Option<Phase>) -> String {
    phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into())
}

fn ready_message(cred: Option<&CredentialStatus>) -> String {
    cred.and_then(|c| c.conditions.iter().find(|c| c.type_ == READY))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "no Ready condition yet".into())
}

/// `authorize (installation|user) NAME`.
pub async fn authorize(args: AuthorizeArgs) -> Result<(), CliError> {
    let client = Client::try_default().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    match args.kind {
        AuthorizeKind::Installation => {
            authorize_one::<ConfluenceInstallation>(Api::namespaced(client, &namespace), "installation", &args).await
        }
        AuthorizeKind::User => {
            authorize_one::<ConfluenceUserAuth>(Api::namespaced(client, &namespace), "user", &args).await
        }
    }
}

async fn authorize_one<K: CredentialResource>(
    api: Api<K>,
    kind: &'static str,
    args: &AuthorizeArgs,
) -> Result<(), CliError> {
    let started = Instant::now();
    let mut printed: Option<String> = None;
    loop {
        let object = api.get(&args.name).await?;
        let cred = object.credential();
        let phase = cred.and_then(|c| c.phase);
        let link = cred.and_then(|c| c.authorization_url.clone());
        match phase {
            Some(Phase::Ready) => {
                println!("{kind}/{} is Ready", args.name);
                return Ok(());
            }
            Some(p @ (Phase::Failed | Phase::Revoked)) if args.wait || link.is_none() => {
                return Err(CliError::Stuck {
                    kind,
                    name: args.name.clone(),
                    phase: p,
                    message: ready_message(cred),
                });
            }
            _ => {}
        }
        if let Some(link) = link
            && printed.as_deref() != Some(link.as_str())
        {
            println!("Open this link to authorize {kind}/{}:\n\n  {link}\n", args.name);
            printed = Some(link);
            if !args.wait {
                return Ok(());
            }
            eprintln!("Waiting for {kind}/{} to become Ready…", args.name);
        }
        if started.elapsed() >= args.timeout {
            return Err(CliError::Timeout {
                kind,
                name: args.name.clone(),
                waited: args.timeout,
                phase: phase_name(phase),
                message: ready_message(cred),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    /// Namespace of the resource.
    pub namespace: String,
    /// `ConfluenceInstallation` or `ConfluenceUserAuth`.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// Phase, `-` before the operator's first status.
    pub phase: String,
    /// Site URL.
    pub site: Option<String>,
    /// The Atlassian account behind the token (installed-by for an installation).
    pub account: Option<String>,
    /// When the current access token expires.
    pub token_expires_at: Option<String>,
    /// When the operator plans its next refresh.
    pub next_refresh: Option<String>,
    /// When the refresh token dies.
    pub refresh_token_expires_at: Option<String>,
    /// The most recent condition that is not as it should be: `Reason: message`.
    pub last_problem: Option<String>,
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

/// A condition that reports trouble: any False one, or `ReauthorizationDue` True; the most
/// recent transition wins.
fn last_problem(conditions: &[Condition]) -> Option<String> {
    conditions
        .iter()
        .filter(|c| {
            if c.type_ == REAUTHORIZATION_DUE {
                c.status == "True"
            } else {
                c.status == "False"
            }
        })
        .max_by_key(|c| c.last_transition_time.0)
        .map(|c| format!("{}: {}", c.reason, c.message))
}

fn row<K: CredentialResource>(object: &K, account: Option<String>) -> StatusRow {
    let cred = object.credential();
    StatusRow {
        namespace: object.namespace().unwrap_or_default(),
        kind: K::kind(&()).to_string(),
        name: object.name_any(),
        phase: phase_name(cred.and_then(|c| c.phase)),
        site: cred.and_then(|c| c.site_url.clone()),
        account: account.or_else(|| cred.and_then(|c| c.installed_by.clone())),
        token_expires_at: cred.and_then(|c| time(&c.access_token_expires_at)),
        next_refresh: cred.and_then(|c| time(&c.next_refresh_time)),
        refresh_token_expires_at: cred.and_then(|c| time(&c.refresh_token_expires_at)),
        last_problem: cred.and_then(|c| last_problem(&c.conditions)),
    }
}

/// Every credential in scope, installations first, each group sorted by namespace and name.
pub async fn rows(client: Client, namespace: Option<&str>) -> Result<Vec<StatusRow>, CliError> {
    // Listed untyped and converted one by one: an object that got past the CRD schema is a row
    // naming its problem, not the end of the listing.
    async fn list<K>(
        client: &Client,
        namespace: Option<&str>,
        to_row: impl Fn(&K) -> StatusRow,
    ) -> Result<Vec<StatusRow>, CliError>
    where
        K: CredentialResource + crate::controller::Stub,
    {
        let resource = ApiResource::erase::<K>(&());
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut items = api.list(&ListParams::default()).await?.items;
        items.sort_by_key(|o| (o.namespace(), o.name_any()));
        Ok(items
            .iter()
            .map(|o| match crate::controller::fit_object::<K>(o) {
                Ok(object) => to_row(&object),
                Err(problem) => StatusRow {
                    namespace: o.namespace().unwrap_or_default(),
                    kind: K::kind(&()).to_string(),
                    name: o.name_any(),
                    phase: o.data["status"]["phase"].as_str().unwrap_or("-").to_string(),
                    site: None,
                    account: None,
                    token_expires_at: None,
                    next_refresh: None,
                    refresh_token_expires_at: None,
                    last_problem: Some(format!("{}: {problem}", crate::crd::conditions::reason::INVALID_SPEC)),
                },
            })
            .collect())
    }
    let mut out = list::<ConfluenceInstallation>(&client, namespace, |o| row(o, None)).await?;
    out.extend(
        list::<ConfluenceUserAuth>(&client, namespace, |o| {
            row(o, o.status.as_ref().and_then(|s| s.account_id.clone()))
        })
        .await?,
    );
    Ok(out)
}

/// Renders rows as an aligned table with kubectl-style upper-case headers.
pub fn table(rows: &[StatusRow]) -> String {
    let header = [
        "NAMESPACE",
        "KIND",
        "NAME",
        "PHASE",
        "SITE",
        "ACCOUNT",
        "TOKEN EXPIRES",
        "NEXT REFRESH",
        "REFRESH TOKEN EXPIRES",
        "LAST PROBLEM",
    ];
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r.namespace.clone(),
            r.kind.clone(),
            r.name.clone(),
            r.phase.clone(),
            dash(&r.site),
            dash(&r.account),
            dash(&r.token_expires_at),
            dash(&r.next_refresh),
            dash(&r.refresh_token_expires_at),
            dash(&r.last_problem),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == line.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `status [-n NAMESPACE | -A] [-o json]`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::try_default().await?;
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        )
    };
    let rows = rows(client, namespace.as_deref()).await?;
    match args.output {
        OutputFormat::Table => print!("{}", table(&rows)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    Ok(())
}
