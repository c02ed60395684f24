//! Command line: subcommands and flags (each flag also readable from an environment variable).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Confluence Cloud OAuth credentials as Kubernetes resources.
#[derive(Debug, Parser)]
#[command(name = "confluence-auth-operator", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: controllers, the OAuth web server and the metrics server.
    Run(Box<RunArgs>),
    /// A local demo: the embedded test control plane (unless KUBECONFIG names a cluster), the
    /// Atlassian stand-in, the examples, and both consent flows walked end to end.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Print both CustomResourceDefinitions as YAML (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// A sidecar: forward an application's calls to Confluence with the token of a mounted
    /// token Secret (`http://127.0.0.1:8080/wiki/...`).
    Proxy(ProxyArgs),
    /// One gateway per namespace for multi-user applications: `/{installation}/users/{userId}/…`
    /// with that user's token, `/{installation}/…` with the installation's.
    Gateway(GatewayArgs),
    /// Print a credential's authorization link; with `--wait`, wait until it is Ready.
    Authorize(AuthorizeArgs),
    /// One table of every credential: phase, site, account, expiries, last problem.
    Status(StatusArgs),
}

/// Flags of `gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// The namespace served (the pod's own; only its credentials and Secrets are watched).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// ServiceAccount usernames admitted, comma separated
    /// (`system:serviceaccount:<namespace>:<name>`).
    #[arg(long, env = "GATEWAY_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
}

/// Which kind `authorize` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorizeKind {
    /// A `ConfluenceInstallation`.
    Installation,
    /// A `ConfluenceUserAuth`.
    User,
}

/// Flags of `authorize`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthorizeArgs {
    /// `installation` or `user`.
    #[arg(value_enum)]
    pub kind: AuthorizeKind,
    /// The resource's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Wait until the resource is Ready; exit non-zero when it fails, is revoked or times out.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    Table,
    /// A JSON array of rows.
    Json,
}

/// Flags of `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Only this namespace (default: the kubeconfig's).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Flags of `proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Where the token Secret is mounted (a volume, not env or subPath: those never update).
    #[arg(long, env = "TOKEN_DIR")]
    pub token_dir: PathBuf,
    /// Listen address; loopback so that only the pod's own containers reach it.
    #[arg(long, env = "PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

/// Flags of `demo`.
#[cfg(feature = "demo")]
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop once both credentials are Ready instead of running until Ctrl-C.
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Also show the operator's INFO log lines (stderr); by default only warnings and errors
    /// (`RUST_LOG` overrides both).
    #[arg(long)]
    pub operator_logs: bool,
    /// Start even when another operator holds the default Lease in the cluster (it must not
    /// watch the `demo` namespace).
    #[arg(long)]
    pub ignore_running_operator: bool,
}

/// Flags of `run` (DESIGN.md section 4). The cluster comes from `KUBECONFIG` or the in-cluster
/// service account.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where browsers reach the webhook; links use it and `redirect_uri` is
    /// `<public-url>/oauth/callback`.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: url::Url,
    /// Atlassian's authorization server.
    #[arg(long, env = "ATLASSIAN_AUTH_URL", default_value = "https://auth.atlassian.com")]
    pub atlassian_auth_url: url::Url,
    /// Atlassian's API gateway.
    #[arg(long, env = "ATLASSIAN_API_URL", default_value = "https://api.atlassian.com")]
    pub atlassian_api_url: url::Url,
    /// Where a site's cloud id is read (client credentials); `{site}` is the site host.
    #[arg(
        long,
        env = "ATLASSIAN_TENANT_INFO_URL",
        default_value = "https://{site}/_edge/tenant_info"
    )]
    pub atlassian_tenant_info_url: String,
    /// Timeout of each call to Atlassian.
    #[arg(long, env = "ATLASSIAN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub atlassian_timeout: std::time::Duration,
    /// Listen address of the OAuth web server.
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:8080")]
    pub webhook_addr: std::net::SocketAddr,
    /// Listen address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: std::net::SocketAddr,
    /// Namespace of the operator (holds the keys Secret); default: the pod's namespace.
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Name of the Secret holding the vault's master keys.
    #[arg(long, env = "KEYS_SECRET", default_value = "confluence-auth-operator-keys")]
    pub keys_secret: String,
    /// Watch only these namespaces, comma separated (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Reconcile only the credentials whose labels match this label selector (`shard=a`,
    /// `shard in (a,b)`, `!legacy`), and watch only their Secrets. Several operators with
    /// disjoint selectors, each with its own `--lease-name`, split a fleet too big for one
    /// (README "Sharding"). The selector's label keys are copied from each credential onto its
    /// Secrets.
    #[arg(long, env = "LABEL_SELECTOR", value_parser = parse_selector)]
    pub selector: Option<crate::selector::Selector>,
    /// Reconciles each controller runs at once. Bounds the memory of a start over a large fleet
    /// (every credential is looked at once) and the burst of requests it sends.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Read `spec.clientSecretRef` only from Secrets labelled
    /// `confluence-auth.dev/client-secret=true` (for clusters where namespace users must not
    /// point the operator at arbitrary Secrets of their namespace).
    #[arg(long, env = "REQUIRE_CLIENT_SECRET_LABEL")]
    pub require_client_secret_label: bool,
    /// Lifetime of an authorization link.
    #[arg(long, env = "LINK_TTL", default_value = "24h", value_parser = parse_duration)]
    pub link_ttl: std::time::Duration,
    /// Sites the operator may contact (`spec.site`, tenant info), comma separated: a site must be
    /// a DNS name strictly under one of these suffixes. Replaces the default list.
    #[arg(
        long,
        env = "ALLOWED_SITE_SUFFIXES",
        value_delimiter = ',',
        default_values_t = crate::validation::DEFAULT_SITE_SUFFIXES.iter().map(|s| s.to_string()),
        value_parser = parse_site_suffix
    )]
    pub allowed_site_suffixes: Vec<String>,
    /// Requests per second one client may make to `/oauth/…` in the long run (0: no limit).
    #[arg(long, env = "WEBHOOK_RATE_LIMIT", default_value_t = 2.0, value_parser = parse_rate)]
    pub webhook_rate_limit: f64,
    /// Requests one client may make to `/oauth/…` in a burst before the rate limit applies.
    #[arg(long, env = "WEBHOOK_RATE_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_rate_burst: u32,
    /// Key the rate limit by the last address in `X-Forwarded-For` instead of the peer
    /// address. Only behind a proxy that appends it (an ingress); otherwise clients choose it.
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Connections the OAuth web server holds at once; further ones are closed at once.
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_connections: u32,
    /// How long a client may take to send a request's headers (and then its body), and how
    /// long an idle keep-alive connection waits for its next request, before it is closed.
    #[arg(long, env = "WEBHOOK_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub webhook_header_timeout: std::time::Duration,
    /// Name of the leader-election Lease (in the operator namespace); only its holder
    /// reconciles.
    #[arg(long, env = "LEASE_NAME", default_value = crate::leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// How long the Lease stays valid without renewal: the longest a successor waits after the
    /// leader dies.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How long SIGTERM waits for the refreshes in flight before the process exits anyway: keep
    /// it below the pod's `terminationGracePeriodSeconds` (the chart sets it 5 s below).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Test only: follow the clock of the Atlassian stand-in at this URL (`{"now": RFC 3339}`)
    /// instead of the system clock.
    #[arg(long, env = "CLOCK_URL", hide = true)]
    pub clock_url: Option<String>,
}

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("a timeout of zero would close every connection at once".into()),
        d => Ok(d),
    }
}

fn parse_site_suffix(text: &str) -> Result<String, String> {
    let suffix = text.trim().trim_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = suffix.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // A numeric last label would make the suffix an IP address (or part of one).
    let numeric_tld = labels.last().is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    if labels.len() >= 2 && labels.iter().all(label_ok) && !numeric_tld {
        Ok(suffix)
    } else {
        Err(format!(
            "{text:?} is not a domain suffix with at least two labels, e.g. atlassian.net"
        ))
    }
}

fn parse_selector(text: &str) -> Result<crate::selector::Selector, String> {
    crate::selector::Selector::parse(text)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate in requests per second, e.g. 2 or 0.5")),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(text).map_err(|e| e.to_string())
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec![
            "confluence-auth-operator",
            "run",
            "--public-url",
            "http://127.0.0.1:8080",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn hardening_flags_have_safe_defaults() {
        let args = run(&[]).unwrap();
        assert_eq!(args.allowed_site_suffixes, ["atlassian.net", "jira.com"]);
        assert_eq!((args.webhook_rate_limit, args.webhook_rate_burst), (2.0, 20));
        assert!(!args.trust_forwarded_for);
        assert_eq!(args.webhook_max_connections, 1024);
        assert_eq!(args.webhook_header_timeout, std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_selector_is_parsed_at_start_and_absent_by_default() {
        assert_eq!(run(&[]).unwrap().selector, None);
        let args = run(&["--selector", "shard=a"]).unwrap();
        assert_eq!(args.selector.map(|s| s.keys()), Some(vec!["shard".to_string()]));
    }

    #[test]
    fn allowed_site_suffixes_replace_the_defaults_and_are_normalised() {
        let args = run(&["--allowed-site-suffixes", "Example.ORG,.corp.example.net."]).unwrap();
        assert_eq!(args.allowed_site_suffixes, ["example.org", "corp.example.net"]);
    }

    #[test]
    fn unsafe_values_are_refused_at_start() {
        for bad in [
            &["--allowed-site-suffixes", "com"][..],
            &["--allowed-site-suffixes", "atlassian.net,"],
            &["--allowed-site-suffixes", "10.0.0.0/8"],
            &["--allowed-site-suffixes", "0.1"],
            &["--webhook-rate-limit", "-1"],
            &["--webhook-rate-limit", "NaN"],
            &["--webhook-rate-burst", "0"],
            &["--webhook-max-connections", "0"],
            &["--webhook-header-timeout", "0s"],
            &["--selector", ""],
            &["--max-concurrent-reconciles", "0"],
            &["--selector", "shard in (a"],
        ] {
            assert!(run(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
