//! Connection-level limits of the operator's web servers (SECURITY.md, finding 6): its own accept
//! loop over hyper, because `warp::serve` has no header-read timeout.
//!
//! - a cap on concurrent connections: one over the cap is closed right after `accept`;
//! - a header-read timeout: a client that has not sent a whole request head in time is
//!   disconnected, and so is a keep-alive connection idle for as long (hyper times the wait for
//!   the next request head the same way);
//! - a body-read deadline: a handler reading a request body gets an error instead of waiting
//!   on a client that trickles it;
//! - a per-client token bucket for the paths that cost work (`/oauth/…`), answered with `429`
//!   and `Retry-After`; memory stays bounded by evicting idle and then least recently seen
//!   clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_service::Service;
use warp::http::{HeaderMap, Request};
use warp::reply::Response;

/// Clients the rate limiter remembers at most; beyond, the idlest are forgotten.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;
/// Largest request head hyper buffers per connection (the handler refuses more than 16 KiB).
const MAX_BUFFER_BYTES: usize = 64 * 1024;
/// How long a shutdown waits for requests in flight before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of one server.
#[derive(Clone)]
pub struct Limits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Time to send a request head, and the longest idle wait of a keep-alive connection.
    pub header_timeout: Duration,
    /// Time to send a request body, counted from when its head arrived; only matters to a
    /// handler that reads the body.
    pub body_timeout: Duration,
    /// The per-client rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

/// Which requests the rate limit covers and what a limited client is told.
#[derive(Clone)]
pub struct RateLimit {
    /// The buckets.
    pub limiter: RateLimiter,
    /// True for a request the limit covers.
    pub applies_to: fn(&Request<Incoming>) -> bool,
    /// The answer to a limited client, given how long it should wait (`429` with `Retry-After`).
    pub answer: fn(Duration) -> Response,
}

/// Token buckets keyed by client address.
#[derive(Clone)]
pub struct RateLimiter(Arc<LimiterInner>);

struct LimiterInner {
    burst: f64,
    per_second: f64,
    trust_forwarded_for: bool,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    seen: Instant,
}

impl RateLimiter {
    /// `burst` requests at once, refilled at `per_second`; with `trust_forwarded_for` the client
    /// is the last address of `X-Forwarded-For` (the one the proxy in front appended).
    pub fn new(burst: u32, per_second: f64, trust_forwarded_for: bool) -> Self {
        Self::with_capacity(burst, per_second, trust_forwarded_for, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(burst: u32, per_second: f64, trust_forwarded_for: bool, max_clients: usize) -> Self {
        Self(Arc::new(LimiterInner {
            burst: f64::from(burst.max(1)),
            per_second,
            trust_forwarded_for,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }))
    }

    /// The key a request is counted under: its peer address, or with `--trust-forwarded-for`
    /// the last well-formed address in `X-Forwarded-For`. IPv6 clients count per /64, the
    /// smallest block one subscriber usually gets.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded = self
            .0
            .trust_forwarded_for
            .then(|| last_forwarded_for(headers))
            .flatten();
        match forwarded.unwrap_or(peer).to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// Takes one token for `client` at `now`: `Err(wait)` when the bucket is empty, `wait`
    /// being when the next token arrives.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let inner = &self.0;
        let mut buckets = inner.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&client) && buckets.len() >= inner.max_clients {
            // Forget the clients whose bucket is full again (nothing to remember), and if all
            // are still active, the one seen longest ago.
            let refill = Duration::from_secs_f64(inner.burst / inner.per_second.max(f64::MIN_POSITIVE));
            buckets.retain(|_, b| now.saturating_duration_since(b.seen) < refill);
            if buckets.len() >= inner.max_clients
                && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.seen).map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: inner.burst,
            seen: now,
        });
        let elapsed = now.saturating_duration_since(bucket.seen).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * inner.per_second).min(inner.burst);
        bucket.seen = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if inner.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / inner.per_second).min(86_400.0),
            ))
        } else {
            Err(Duration::from_secs(86_400))
        }
    }

    /// Clients currently remembered.
    pub fn tracked(&self) -> usize {
        self.0.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Serves `service` on `listener` within `limits` until `shutdown` resolves, then lets requests
/// in flight finish (up to ten seconds).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: Service<Request<TimedBody>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUFFER_BYTES);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached: closing a new connection");
            drop(stream);
            continue;
        };
        let per_request = PerRequest {
            service: service.clone(),
            peer: peer.ip(),
            rate_limit: limits.rate_limit.clone(),
            body_timeout: limits.body_timeout,
        };
        let connection = builder.serve_connection(TokioIo::new(stream), per_request);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the drain timeout were dropped");
    }
}

/// One connection's service: the rate limit in front of the wrapped service.
#[derive(Clone)]
struct PerRequest<S> {
    service: S,
    peer: IpAddr,
    rate_limit: Option<RateLimit>,
    body_timeout: Duration,
}

impl<S> hyper::service::Service<Request<Incoming>> for PerRequest<S>
where
    S: Service<Request<TimedBody>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if let Some(limit) = &self.rate_limit
            && (limit.applies_to)(&request)
        {
            let client = limit.limiter.client(self.peer, request.headers());
            if let Err(wait) = limit.limiter.take(client, Instant::now()) {
                tracing::debug!(%client, path = request.uri().path(), "rate limited a client");
                let answer = (limit.answer)(wait);
                return Box::pin(std::future::ready(Ok(answer)));
            }
        }
        let mut service = self.service.clone();
        let request = request.map(|body| TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(self.body_timeout)),
        });
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        })
    }
}

/// A request body that fails once its deadline passes before it is complete.
pub struct TimedBody {
    inner: Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client did not send the body in time.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] hyper::Error),
}

impl hyper::body::Body for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::from))),
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Some(Err(BodyError::Timeout))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `Retry-After` in whole seconds, at least one.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_burst_then_the_refill_rate() {
        let limiter = RateLimiter::new(3, 2.0, false);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(A, t0), Ok(()));
        }
        assert_eq!(limiter.take(A, t0), Err(Duration::from_millis(500)));
        // Another client has its own bucket.
        assert_eq!(limiter.take(B, t0), Ok(()));
        // Half a second refills one token, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.take(A, t1), Ok(()));
        assert!(limiter.take(A, t1).is_err());
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.take(A, t2), Ok(()));
        }
        assert!(limiter.take(A, t2).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_active_clients_are_kept_longest() {
        let limiter = RateLimiter::with_capacity(2, 1.0, false, 3);
        let t0 = Instant::now();
        limiter.take(A, t0).unwrap();
        limiter.take(A, t0).unwrap();
        for i in 10..200u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i));
            let _ = limiter.take(ip, t0 + Duration::from_millis(u64::from(i)));
            assert!(limiter.tracked() <= 3);
        }
        // A was the least recently seen, so it was forgotten: a fresh bucket.
        assert!(limiter.take(A, t0 + Duration::from_millis(300)).is_ok());
    }

    #[test]
    fn forwarded_for_counts_only_when_trusted_and_only_its_last_entry() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 198.51.100.7"));
        let untrusted = RateLimiter::new(1, 1.0, false);
        assert_eq!(untrusted.client(A, &headers), A);
        let trusted = RateLimiter::new(1, 1.0, true);
        assert_eq!(trusted.client(A, &headers), "198.51.100.7".parse::<IpAddr>().unwrap());
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(trusted.client(A, &headers), A);
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let limiter = RateLimiter::new(1, 1.0, false);
        let none = HeaderMap::new();
        let one = limiter.client("2001:db8:1:2:aaaa::1".parse().unwrap(), &none);
        let other = limiter.client("2001:db8:1:2:bbbb::2".parse().unwrap(), &none);
        assert_eq!(one, other);
        assert_eq!(limiter.client("::ffff:192.0.2.1".parse().unwrap(), &none), A);
    }

    /// Sends `request` on a fresh connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                seen.extend_from_slice(&buf[..n]);
            }
        });
        read.await.expect("the server closes the connection in time");
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn a_trickled_body_fails_once_the_body_timeout_passes() {
        use warp::Filter;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = warp::body::bytes().map(|body: hyper::body::Bytes| format!("got {} bytes", body.len()));
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_millis(500),
            rate_limit: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, warp::service(route), limits, async {
            let _ = stopped.await;
        }));

        let whole = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n0123456789",
        )
        .await;
        assert!(
            whole.starts_with("HTTP/1.1 200") && whole.ends_with("got 10 bytes"),
            "{whole}"
        );

        let started = Instant::now();
        let trickled = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "answered before the deadline"
        );
        assert!(!trickled.contains("got "), "{trickled}");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(500)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
