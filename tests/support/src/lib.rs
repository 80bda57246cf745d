//! Helpers shared by the workspace's tests.
//!
//! [`SlurmCluster`] runs a real one-node Slurm cluster (Debian's daemons, as root).
//!
//! [`S3Server`] runs a real S3 server (`s3s-fs`, the S3 protocol over a temporary
//! directory) on `127.0.0.1` in a background thread, with signature-checked
//! credentials, so tests talk to S3 through the same HTTP client code as production.
//!
//! ```no_run
//! let server = s3_test_support::S3Server::start();
//! let url = server.url("run-1"); // s3://test-bucket/run-1
//! for (k, v) in server.env() { /* hand to a child process */ let _ = (k, v); }
//! ```

mod slurm;
pub use slurm::SlurmCluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

/// Access key the test server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// Secret key the test server accepts; tests assert it never shows up in logs.
pub const SECRET_KEY: &str = "test-secret-key-d0-not-print";
/// The bucket every server starts with.
pub const BUCKET: &str = "test-bucket";

/// An in-process S3 server; stopped when dropped. It can be stopped and restarted
/// over the same data and port, to test clients against an outage.
pub struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on an ephemeral loopback port with one empty bucket.
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir for the S3 server");
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("bucket directory");
        let (addr, stop, thread) = serve(root.path().to_path_buf(), ("127.0.0.1", 0));
        S3Server { addr, root, stop: Some(stop), thread: Some(thread) }
    }

    /// Stops serving, as a crashed or unreachable server would: open connections are
    /// dropped and new ones refused. The data stays; [`S3Server::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Serves the same data on the same port again (a no-op while running).
    pub fn restart(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let (addr, stop, thread) = serve(self.root.path().to_path_buf(), self.addr);
        assert_eq!(addr, self.addr, "restarted on another address");
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    /// Whether the server is serving (not stopped).
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `s3://test-bucket/<prefix>`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The `AWS_*` variables a child process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// Where the server keeps object `key` of the bucket on disk (for corruption tests).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The server's data directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The S3 service with its conditional PUTs (`If-Match`, `If-None-Match`) taken one at
/// a time. s3s-fs checks the precondition and writes the object in two steps, so two
/// racing writers could both pass the check; S3 itself decides atomically, and the
/// tests of writers that race (the run ledger) need the server to as well.
#[derive(Clone)]
struct OneConditionalPutAtATime {
    inner: S3Service,
    lock: Arc<tokio::sync::Mutex<()>>,
}

type Request = hyper::Request<hyper::body::Incoming>;
type Inner = <S3Service as hyper::service::Service<Request>>::Response;
type InnerError = <S3Service as hyper::service::Service<Request>>::Error;

impl hyper::service::Service<Request> for OneConditionalPutAtATime {
    type Response = Inner;
    type Error = InnerError;
    type Future = Pin<Box<dyn Future<Output = Result<Inner, InnerError>> + Send>>;

    fn call(&self, req: Request) -> Self::Future {
        let h = req.headers();
        let conditional = req.method() == hyper::Method::PUT
            && (h.contains_key(hyper::header::IF_MATCH) || h.contains_key(hyper::header::IF_NONE_MATCH));
        let (inner, lock) = (self.inner.clone(), self.lock.clone());
        Box::pin(async move {
            let _one_at_a_time = if conditional { Some(lock.lock().await) } else { None };
            hyper::service::Service::call(&inner, req).await
        })
    }
}

/// Runs an s3s-fs server over `fs_root` on `bind` in a thread of its own; returns
/// its address, the stop switch and the thread. Stopping drops the thread's runtime
/// and with it every connection.
fn serve(
    fs_root: PathBuf,
    bind: impl tokio::net::ToSocketAddrs + Send + 'static,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("s3s-fs".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime for the S3 server");
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(fs_root).expect("s3s-fs root");
                let mut builder = S3ServiceBuilder::new(fs);
                builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = OneConditionalPutAtATime { inner: builder.build(), lock: Arc::default() };
                // tokio sets SO_REUSEADDR, so a restart can take the port back at once.
                let listener = TcpListener::bind(bind).await.expect("bind loopback");
                ready_tx.send(listener.local_addr().expect("local addr")).expect("report address");
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        res = listener.accept() => {
                            let Ok((socket, _)) = res else { continue };
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
            });
            // Dropping the runtime here cancels the connection tasks: clients see resets.
            rt.shutdown_background();
        })
        .expect("spawn S3 server thread");
    let addr = ready_rx.recv().expect("S3 server failed to start");
    (addr, stop_tx, thread)
}
