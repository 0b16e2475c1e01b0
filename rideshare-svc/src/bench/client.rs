//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection per client task, on
//! hyper's low-level `client::conn::http1` (no pool, no lock, no per-request task).
//!
//! A connection that fails or times out is dropped and opened again before the next request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::BenchError;

/// The gateway the bench loads: where to connect and what to send as `Host`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base URL as given, for reports.
    pub url: String,
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    /// Parses `http://host:port` (no path, no TLS) and resolves the host once.
    pub async fn resolve(url: &str) -> Result<Self, BenchError> {
        let bad = |why: &str| BenchError::Gateway(format!("{url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give the gateway's base URL, without a path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(|e| bad(&format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| bad("the host resolves to no address"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            host,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why one request got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the per-request timeout.
    Timeout,
    /// Connecting, sending or reading failed.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

/// One keep-alive connection to the target.
pub struct Conn {
    target: Target,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection that opens on first use; each request (connecting included) is bounded by
    /// `timeout`.
    pub fn new(target: Target, timeout: Duration) -> Self {
        Conn {
            target,
            timeout,
            sender: None,
        }
    }

    /// Opens the connection now, so that the first timed request does not pay for it.
    pub async fn connect(&mut self) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.ready()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }

    /// Sends one request (a JSON body when `body` is given) and reads the whole answer.
    pub async fn call(
        &mut self,
        method: Method,
        uri: Uri,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let outcome = tokio::time::timeout(self.timeout, self.exchange(method, uri, body)).await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The answer may still arrive later on this connection: start a fresh one.
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        uri: Uri,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let host = self.target.host.clone();
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, host);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Failure::Transport(format!("bad request: {e}")))?;
        let sender = self.ready().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// The sender of a live connection, opening one when there is none or it was closed. On an
    /// error the caller drops the connection.
    async fn ready(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        let sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.open().await?,
        };
        let sender = self.sender.insert(sender);
        sender
            .ready()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        Ok(sender)
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| Failure::Transport(format!("connect {}: {e}", self.target.addr)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        // Drives the connection; it ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}
