//! A gRPC service of a test's own (an authorization server, an external
//! processor, a rate limit service) served on a free loopback port by a
//! thread of its own, stopped and joined when dropped.

use super::free_port;
use std::time::Duration;

pub struct GrpcServer {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the router `services` builds (`Server::builder().add_service(..)`);
/// returns once the port is bound. `what` names it in failures.
pub fn serve<F>(what: &'static str, services: F) -> GrpcServer
where
    F: FnOnce() -> tonic::transport::server::Router + Send + 'static,
{
    let port = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("bind {what}: {e}"));
            let _ = ready_tx.send(());
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = services()
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} started"));
    GrpcServer { port, stop: Some(stop), thread: Some(thread) }
}
