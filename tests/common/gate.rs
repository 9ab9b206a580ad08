//! A TCP gate in front of a server, for outages on demand: open, it forwards every connection
//! to the target; closed, it cuts the connections it carries and refuses new ones. It can also
//! close by itself once a number of bytes have gone through to the target, to cut a transfer
//! in its middle, pace what clients send (a slow uplink), and count what they sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<watch::Sender<bool>>,
    /// Bytes still allowed through to the target before the gate closes; negative: no limit.
    budget: Arc<AtomicI64>,
    /// Bytes clients sent into the gate, forwarded or not.
    received: Arc<AtomicU64>,
    /// Bytes per second forwarded to the target from each client; 0: as fast as they come.
    pace: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A gate to `target`, open, on 127.0.0.1 and a free port.
    pub async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(watch::Sender::new(true));
        let budget = Arc::new(AtomicI64::new(-1));
        let received = Arc::new(AtomicU64::new(0));
        let pace = Arc::new(AtomicU64::new(0));
        let task = {
            let (open, budget) = (open.clone(), budget.clone());
            let (received, pace) = (received.clone(), pace.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let mut state = open.subscribe();
                    if !*state.borrow() {
                        drop(client);
                        continue;
                    }
                    let (open, budget) = (open.clone(), budget.clone());
                    let (received, pace) = (received.clone(), pace.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut from_client, mut to_client) = client.into_split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let upstream = async {
                            let mut buffer = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_client.read(&mut buffer).await {
                                    Ok(0) | Err(_) => {
                                        let _ = to_server.shutdown().await;
                                        return;
                                    }
                                    Ok(n) => n,
                                };
                                received.fetch_add(n as u64, Ordering::SeqCst);
                                let rate = pace.load(Ordering::SeqCst);
                                if rate > 0 {
                                    tokio::time::sleep(std::time::Duration::from_secs_f64(
                                        n as f64 / rate as f64,
                                    ))
                                    .await;
                                }
                                if spend(&budget, n) {
                                    open.send_replace(false);
                                    return;
                                }
                                if to_server.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        // Each side's end is passed on to the other, as a proxy does.
                        let downstream = async {
                            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                            let _ = to_client.shutdown().await;
                        };
                        tokio::select! {
                            _ = async { tokio::join!(upstream, downstream) } => {}
                            _ = state.wait_for(|open| !*open) => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            open,
            budget,
            received,
            pace,
            _task: task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones until [`Gate::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Lets `bytes` more through to the target, then closes.
    pub fn close_after(&self, bytes: i64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    /// Whether the gate lets connections through.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Bytes clients have sent into the gate so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Forwards what each client sends at most at `bytes_per_s` (0: no limit).
    pub fn pace(&self, bytes_per_s: u64) {
        self.pace.store(bytes_per_s, Ordering::SeqCst);
    }

    /// Opens, with no limit on what goes through.
    pub fn open(&self) {
        self.budget.store(-1, Ordering::SeqCst);
        self.open.send_replace(true);
    }
}

/// Takes `n` bytes from a limited budget; true when the budget is spent.
fn spend(budget: &AtomicI64, n: usize) -> bool {
    let before = budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            (left >= 0).then(|| (left - n as i64).max(0))
        })
        .unwrap_or(-1);
    before >= 0 && before <= n as i64
}
