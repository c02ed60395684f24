//! The Kubernetes client of `run`. kube's default client retries 429/503/504 itself up to 15
//! times, up to 1000 s apart: during a long API outage a reconcile would wait inside the client
//! while another credential's refresh falls due. Here the client tries a few times over about a
//! second and then hands the error to the reconciler, whose backoff stays within the token's
//! remaining life (BENCHMARKS.md, "Fault suite").

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;

/// First wait before a retry inside the client.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two tries inside the client.
const LONGEST_RETRY: Duration = Duration::from_millis(800);
/// Tries after the first one (about 1.5 s in all, with the waits doubling).
const RETRIES: u32 = 4;
/// Requests that may wait for the client's dispatch task at once (a retry needs a cloneable
/// service, and the buffer is what makes kube's boxed one cloneable).
const QUEUE: usize = 1024;

/// A client for the configured cluster (kubeconfig or in-cluster) with the bounded retry.
pub async fn connect() -> Result<kube::Client, Box<dyn std::error::Error>> {
    Ok(with_bounded_retry(kube::Config::infer().await?)?)
}

/// A client for `config` that retries 429/503/504 at most [`RETRIES`] times, ignoring long
/// `Retry-After` values (the reconciler honours those with its own backoff).
pub fn with_bounded_retry(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    let policy =
        RetryPolicy::new(FIRST_RETRY, LONGEST_RETRY, RETRIES, false).expect("the retry bounds are valid constants");
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&tower::buffer::BufferLayer::new(QUEUE))
        .with_layer(&tower::retry::RetryLayer::new(policy))
        .build())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An API server that answers the first `failures` requests 503 (asking for a 10-minute
    /// wait) and the rest with a version; returns its URL and the request counter.
    async fn flaky_server(failures: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = if counter.fetch_add(1, Ordering::SeqCst) < failures {
                                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 600\r\ncontent-length: 0\r\n\r\n"
                                    .to_string()
                            } else {
                                let body = r#"{"major":"1","minor":"32","gitVersion":"v1.32.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                            };
                            stream.write_all(answer.as_bytes()).await.unwrap();
                        }
                    }
                });
            }
        });
        (url, served)
    }

    fn client(url: &str) -> kube::Client {
        with_bounded_retry(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn a_short_outage_is_retried_inside_the_client() {
        let (url, served) = flaky_server(2).await;
        let version = client(&url).apiserver_version().await.unwrap();
        assert_eq!(version.minor, "32");
        assert_eq!(served.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_long_outage_reaches_the_caller_after_a_few_tries_whatever_retry_after_says() {
        let (url, served) = flaky_server(usize::MAX).await;
        let error = client(&url).apiserver_version().await.unwrap_err();
        assert!(error.to_string().contains("503"), "{error}");
        // Five tries, none of them 600 s after the last (that wait is the reconciler's).
        assert_eq!(served.load(Ordering::SeqCst), 1 + RETRIES as usize);
    }
}
