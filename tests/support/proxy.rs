//! A fault-injecting TCP proxy on loopback, for partitions between processes: it forwards every
//! connection to its target both ways until it is cut; then it closes what it forwarded and
//! holds new connections unanswered (a partition: what is sent goes nowhere) until it is healed.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// One proxy: connections to [`Proxy::addr`] reach `target` while it is not cut.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Connections forwarded (both halves) or held; closed when cut (held ones when healed).
    open: Arc<Mutex<Vec<TcpStream>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Proxy {
    /// Starts a proxy to `target` on a free loopback port (its threads end with the test
    /// process).
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut_flag, connections) = (Arc::clone(&cut), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut open = connections.lock().unwrap();
                if cut_flag.load(Ordering::SeqCst) {
                    // Held: never answered, closed at heal.
                    open.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { continue };
                open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (up, down) = (Arc::clone(&cut_flag), Arc::clone(&cut_flag));
                std::thread::spawn(move || pump(client, server2, &up));
                std::thread::spawn(move || pump(server, client2, &down));
            }
        });
        Self { addr, cut, open }
    }

    /// Cuts the link: forwarded connections are closed, new ones held unanswered.
    pub fn cut(&self) {
        let mut open = self.open.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Heals the link: held connections are closed (their peer reconnects), new ones forwarded.
    pub fn heal(&self) {
        let mut open = self.open.lock().unwrap();
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}
