//! `ReplyCutter`: a TCP relay on 127.0.0.1 in front of a Redis that can
//! lose one reply on purpose. Told a needle, it drops the next chunk from
//! Redis that contains it and closes that connection: Redis has run the
//! command (an XREADGROUP has handed its entries to the consumer), but the
//! client never hears the answer, as when a connection drops at the wrong
//! moment. It also says which connections to Redis are its clients', so a
//! test can CLIENT KILL exactly those.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay; stops accepting when dropped.
pub struct ReplyCutter {
    addr: SocketAddr,
    needle: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<Mutex<u32>>,
    open: Arc<Mutex<std::collections::HashSet<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplyCutter {
    /// A relay to the Redis on 127.0.0.1:`port`.
    pub async fn start(port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let needle: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let cuts: Arc<Mutex<u32>> = Arc::default();
        let open: Arc<Mutex<std::collections::HashSet<SocketAddr>>> = Arc::default();
        let task = {
            let (needle, cuts, open) = (needle.clone(), cuts.clone(), open.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else { continue };
                    let Ok(local) = server.local_addr() else { continue };
                    open.lock().expect("open").insert(local);
                    let (needle, cuts, open) = (needle.clone(), cuts.clone(), open.clone());
                    tokio::spawn(async move {
                        relay(client, server, needle, cuts).await;
                        open.lock().expect("open").remove(&local);
                    });
                }
            })
        };
        Self { addr, needle, cuts, open, task }
    }

    /// `redis://127.0.0.1:PORT`, the relay's own address.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Loses the next reply that contains `needle` (once).
    pub fn cut_next(&self, needle: &[u8]) {
        *self.needle.lock().expect("needle") = Some(needle.to_vec());
    }

    /// Whether the needle set last is still waiting for its reply.
    pub fn armed(&self) -> bool {
        self.needle.lock().expect("needle").is_some()
    }

    /// The addresses Redis sees for the relayed connections open now (the
    /// `addr` of CLIENT LIST, for CLIENT KILL ADDR).
    pub fn upstream_addrs(&self) -> Vec<SocketAddr> {
        self.open.lock().expect("open").iter().copied().collect()
    }

    /// Replies lost so far.
    pub fn cuts(&self) -> u32 {
        *self.cuts.lock().expect("cuts")
    }
}

impl Drop for ReplyCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, needle: Arc<Mutex<Option<Vec<u8>>>>, cuts: Arc<Mutex<u32>>) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let cut = {
            let mut needle = needle.lock().expect("needle");
            let hit = needle.as_ref().is_some_and(|w| chunk.windows(w.len()).any(|c| c == w.as_slice()));
            if hit {
                *needle = None;
            }
            hit
        };
        if cut {
            *cuts.lock().expect("cuts") += 1;
            break;
        }
        if client_tx.write_all(chunk).await.is_err() {
            break;
        }
    }
    up.abort();
}
