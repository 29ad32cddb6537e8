//! The peer protocol: TCP between members (mutual TLS 1.3 when `[cluster.tls]` is set, see
//! `tls`), length-prefixed postcard frames, one request and its reply at a time per connection
//! (connections are pooled). A connection is used only after both ends proved they hold the
//! shared secret (inside TLS when it is on): each sends a random nonce, each answers with
//! HMAC-SHA256(secret, role, both nonces), checked in constant time; a peer without it, or
//! whose certificate does not lead to the cluster CA, is refused and counted
//! (`cluster_peers_refused`). A member whose data directory is under its reserve answers
//! entries and proposals with a refusal (`disk`).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::{
    BasicNode, RaftNetwork, RaftNetworkFactory,
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{Backoff, RPCOption},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
        VoteRequest, VoteResponse,
    },
};
use ring::{hmac, rand::SecureRandom as _};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::{self, ClientConfig, ServerConfig, pki_types::ServerName},
};

use super::{
    Committed, Proposal, RaftId, TypeConfig,
    config::Secret,
    disk::DiskGuard,
    members::{Change, ChangeRefused, Removal, address, change_here},
    status::ClusterStatus,
    totals::{Ack, Delta, SharedTotals},
};
use crate::telemetry::{Counters, add};

/// Version of the peer protocol (in the handshake; another version is refused). 2: entries hold
/// events in the binary encoding of `codec`. 3: membership changes (`Change`, `Removed`).
const PROTOCOL_VERSION: u16 = 3;
/// Largest frame once authenticated: a few entries of at most `entry_events` events each.
pub const FRAME_MAX: usize = 256 << 20;
/// Largest handshake frame (a nonce and a MAC).
const HANDSHAKE_FRAME_MAX: usize = 256;
/// A handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per peer.
const POOL: usize = 4;
const NONCE: usize = 32;

/// A request to a peer.
#[derive(Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit this batch (sent to the leader by the member that captured it).
    Propose(Proposal),
    /// This member's view of the cluster (asked of the leader, which knows every member's lag).
    Status,
    /// Counters of runs that changed (the cluster-wide counters, `totals`).
    Gossip(Delta),
    /// Add or remove a member (sent to the leader by the member whose control API was asked).
    Change(Change),
    /// The leader removed the member it sends this to (the reason, as it says it).
    Removed(String),
}

/// A peer's reply.
#[derive(Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>),
    Vote(Result<VoteResponse<RaftId>, RaftError<RaftId>>),
    Snapshot(Result<InstallSnapshotResponse<RaftId>, RaftError<RaftId, InstallSnapshotError>>),
    Propose(Result<Committed, Refused>),
    Status(ClusterStatus),
    Gossip(Ack),
    Change(Result<String, ChangeRefused>),
    /// A proposal or counters from a raft id that is not in this member's view of the
    /// membership (removed, or not added yet) are refused.
    NotMember,
    Removed,
    /// The request was not served (a data directory under its reserve): why.
    Refused(String),
}

/// Why a proposal was not committed.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    #[error("member {asked} is not the leader (leader: {leader:?})")]
    NotLeader { asked: RaftId, leader: Option<RaftId> },
    #[error("no leader is known")]
    NoLeader,
    #[error("member {0} is not in the cluster's membership (removed, or not added yet)")]
    NotMember(RaftId),
    #[error("{0}")]
    Failed(String),
}

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u16,
    from: RaftId,
    nonce: [u8; NONCE],
}

#[derive(Serialize, Deserialize)]
struct Proof {
    nonce: [u8; NONCE],
    mac: Vec<u8>,
}

/// What a member does with requests: the raft node's handlers (the server side).
pub type Raft = openraft::Raft<TypeConfig>;

/// A connection to a peer, plain or TLS.
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerIo for T {}
type Connection = Box<dyn PeerIo>;

fn nonce() -> std::io::Result<[u8; NONCE]> {
    let mut nonce = [0u8; NONCE];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| std::io::Error::other("no random source"))?;
    Ok(nonce)
}

/// HMAC-SHA256(secret, role | client nonce | server nonce).
fn mac(key: &hmac::Key, role: &[u8], client: &[u8; NONCE], server: &[u8; NONCE]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(role);
    context.update(client);
    context.update(server);
    context.sign()
}

fn verify(key: &hmac::Key, role: &[u8], client: &[u8; NONCE], server: &[u8; NONCE], tag: &[u8]) -> bool {
    let mut message = Vec::with_capacity(role.len() + 2 * NONCE);
    message.extend_from_slice(role);
    message.extend_from_slice(client);
    message.extend_from_slice(server);
    // ring compares the tags in constant time.
    hmac::verify(key, &message, tag).is_ok()
}

async fn write_frame<T: Serialize>(stream: &mut (impl AsyncWrite + Unpin), value: &T) -> std::io::Result<()> {
    let mut bytes = vec![0u8; 4];
    bytes = postcard::to_extend(value, bytes).map_err(std::io::Error::other)?;
    let len = u32::try_from(bytes.len() - 4).map_err(|_| std::io::Error::other("frame too large"))?;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    stream.write_all(&bytes).await?;
    // TLS holds records until flushed.
    stream.flush().await
}

async fn read_frame<T: DeserializeOwned>(
    stream: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<T> {
    let len = stream.read_u32_le().await? as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn refused(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, message.to_owned())
}

/// A TLS handshake's failure: what TLS refused (a certificate not from the cluster CA or none,
/// plain TCP, another protocol) is a refusal; the connection breaking off is not.
fn tls_failure(error: std::io::Error) -> std::io::Error {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => refused(&format!("TLS: {tls}")),
        None => error,
    }
}

/// The client side of the handshake.
async fn client_handshake(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    key: &hmac::Key,
    me: RaftId,
) -> std::io::Result<()> {
    let ours = nonce()?;
    write_frame(stream, &Hello { version: PROTOCOL_VERSION, from: me, nonce: ours }).await?;
    let theirs: Proof = read_frame(stream, HANDSHAKE_FRAME_MAX).await?;
    if !verify(key, b"vexevent-raft-server", &ours, &theirs.nonce, &theirs.mac) {
        return Err(refused("the peer does not hold the cluster's shared secret"));
    }
    let mac = mac(key, b"vexevent-raft-client", &ours, &theirs.nonce);
    write_frame(stream, &Proof { nonce: [0; NONCE], mac: mac.as_ref().to_vec() }).await
}

/// The server side of the handshake: the peer's raft id once it proved the secret.
async fn server_handshake(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    key: &hmac::Key,
) -> std::io::Result<RaftId> {
    let hello: Hello = read_frame(stream, HANDSHAKE_FRAME_MAX).await?;
    if hello.version != PROTOCOL_VERSION {
        return Err(refused(&format!(
            "protocol version {} (this member speaks {PROTOCOL_VERSION})",
            hello.version
        )));
    }
    let ours = nonce()?;
    let mac = mac(key, b"vexevent-raft-server", &hello.nonce, &ours);
    write_frame(stream, &Proof { nonce: ours, mac: mac.as_ref().to_vec() }).await?;
    let proof: Proof = read_frame(stream, HANDSHAKE_FRAME_MAX).await?;
    if !verify(key, b"vexevent-raft-client", &hello.nonce, &ours, &proof.mac) {
        return Err(refused("the peer does not hold the cluster's shared secret"));
    }
    Ok(hello.from)
}

/// What the server answers a status request with.
pub type StatusFn = Arc<dyn Fn() -> ClusterStatus + Send + Sync>;

/// What the peer server answers with.
pub struct Server {
    pub raft: Raft,
    pub peers: Peers,
    pub removal: Removal,
    pub secret: Secret,
    pub status: StatusFn,
    pub totals: Arc<SharedTotals>,
    pub counters: Arc<Counters>,
    /// Mutual TLS (`None`: plain TCP).
    pub tls: Option<Arc<ServerConfig>>,
    pub disk: DiskGuard,
}

/// The server side of a connection: TLS (when on), then the shared secret; the peer's raft id.
async fn accept(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    key: &hmac::Key,
) -> std::io::Result<(Connection, RaftId)> {
    let mut connection: Connection = match tls {
        Some(acceptor) => Box::new(acceptor.accept(stream).await.map_err(tls_failure)?),
        None => Box::new(stream),
    };
    let from = server_handshake(&mut connection, key).await?;
    Ok((connection, from))
}

/// Serves peers on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, server: Server) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, server.secret.bytes());
    let tls = server.tls.clone().map(TlsAcceptor::from);
    let server = Arc::new(server);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cluster listener: cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (server, key, tls) = (Arc::clone(&server), key.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let counters = &server.counters;
            let (mut stream, from) =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(stream, tls.as_ref(), &key)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                        add(&counters.cluster_peers_refused, 1);
                        tracing::warn!(%peer, %error, "cluster: peer refused");
                        return;
                    }
                    Ok(Err(error)) => {
                        add(&counters.cluster_handshakes_failed, 1);
                        tracing::warn!(%peer, %error, "cluster: peer handshake failed");
                        return;
                    }
                    Err(_) => {
                        add(&counters.cluster_handshakes_failed, 1);
                        tracing::warn!(%peer, "cluster: peer handshake timed out");
                        return;
                    }
                };
            while let Ok(request) = read_frame::<Request>(&mut stream, FRAME_MAX).await {
                let reply = server.answer(from, request).await;
                if write_frame(&mut stream, &reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

impl Server {
    /// The reply to `request` from member `from` (authenticated). Events and counters are
    /// taken from members only: a removed member's are refused. A member under its disk reserve
    /// refuses entries and proposals.
    async fn answer(&self, from: RaftId, request: Request) -> Reply {
        let raft = &self.raft;
        let me = self.peers.me;
        match request {
            Request::Append(rpc) if !rpc.entries.is_empty() => match self.disk.admit() {
                Ok(()) => Reply::Append(raft.append_entries(rpc).await),
                Err(low) => Reply::Refused(format!("member {me}: {low}")),
            },
            Request::Append(rpc) => Reply::Append(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
            Request::Snapshot(rpc) => Reply::Snapshot(raft.install_snapshot(rpc).await),
            Request::Propose(_) | Request::Gossip(_) if !self.peers.is_member(from) => {
                add(&self.counters.cluster_not_member_refused, 1);
                Reply::NotMember
            }
            Request::Propose(proposal) => Reply::Propose(propose_here(raft, me, &self.disk, proposal).await),
            Request::Status => Reply::Status((self.status)()),
            Request::Gossip(delta) => Reply::Gossip(self.totals.receive(delta)),
            Request::Change(change) => {
                Reply::Change(change_here(raft, &self.peers, &self.removal, change).await)
            }
            Request::Removed(why) => {
                let removal = self.removal.clone();
                // Not awaited here: retiring stops the raft node this connection serves.
                tokio::spawn(async move { removal.retire(why).await });
                Reply::Removed
            }
        }
    }
}

/// Commits `proposal` through this member (the leader), unless its data directory is under
/// its reserve.
pub async fn propose_here(
    raft: &Raft,
    me: RaftId,
    disk: &DiskGuard,
    proposal: Proposal,
) -> Result<Committed, Refused> {
    use openraft::error::ClientWriteError;
    if let Err(low) = disk.admit() {
        return Err(Refused::Failed(format!("member {me} takes no writes: {low}")));
    }
    match raft.client_write(proposal).await {
        Ok(response) => Ok(Committed { index: response.log_id.index, outcome: response.data }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(Refused::NotLeader { asked: me, leader: forward.leader_id })
        }
        Err(error) => Err(Refused::Failed(error.to_string())),
    }
}

/// Pooled, authenticated connections to the members.
#[derive(Clone)]
pub struct Peers {
    pub me: RaftId,
    key: hmac::Key,
    /// The addresses `cluster.peers` names: dialed first.
    configured: Arc<BTreeMap<RaftId, SocketAddr>>,
    /// The members as the cluster's membership holds them (the configured ones until it is known).
    members: Arc<Mutex<BTreeMap<RaftId, SocketAddr>>>,
    idle: Arc<Mutex<HashMap<RaftId, Vec<Connection>>>>,
    /// Mutual TLS (`None`: plain TCP).
    tls: Option<TlsConnector>,
    counters: Arc<Counters>,
}

/// Locks `mutex`, whether or not a holder panicked.
pub fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Peers {
    #[must_use]
    pub fn new(
        me: RaftId,
        secret: &Secret,
        configured: BTreeMap<RaftId, SocketAddr>,
        tls: Option<Arc<ClientConfig>>,
        counters: &Arc<Counters>,
    ) -> Self {
        Self {
            me,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.bytes()),
            members: Arc::new(Mutex::new(configured.clone())),
            configured: Arc::new(configured),
            idle: Arc::default(),
            tls: tls.map(TlsConnector::from),
            counters: Arc::clone(counters),
        }
    }

    /// Dials `addr`: TLS (when on, the certificate must name the address), then the secret.
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut connection: Connection = match &self.tls {
            Some(connector) => Box::new(
                connector
                    .connect(ServerName::IpAddress(addr.ip().into()), stream)
                    .await
                    .map_err(tls_failure)?,
            ),
            None => Box::new(stream),
        };
        client_handshake(&mut connection, &self.key, self.me).await?;
        Ok(connection)
    }

    /// The address this member dials for `id`: the configured one, else the membership's.
    #[must_use]
    pub fn addr(&self, id: RaftId) -> Option<SocketAddr> {
        self.configured.get(&id).copied().or_else(|| locked(&self.members).get(&id).copied())
    }

    /// Whether `id` is in the membership as this member knows it.
    #[must_use]
    pub fn is_member(&self, id: RaftId) -> bool {
        locked(&self.members).contains_key(&id)
    }

    /// The members as this member knows them, itself left out.
    #[must_use]
    pub fn others(&self) -> Vec<RaftId> {
        locked(&self.members).keys().copied().filter(|&id| id != self.me).collect()
    }

    /// Takes the membership's members (voters and learners): idle connections to a member that
    /// left or moved are closed.
    pub fn set_members(&self, members: BTreeMap<RaftId, SocketAddr>) {
        let mut held = locked(&self.members);
        if *held == members {
            return;
        }
        let mut idle = locked(&self.idle);
        idle.retain(|id, _| members.get(id).is_some_and(|addr| held.get(id) == Some(addr)));
        *held = members;
    }

    /// Knows `id` at `addr` until the membership says otherwise (a learner the leader replicates
    /// to before its membership is seen here).
    fn learn(&self, id: RaftId, addr: SocketAddr) {
        locked(&self.members).entry(id).or_insert(addr);
    }

    async fn connection(&self, target: RaftId) -> std::io::Result<Connection> {
        let pooled = locked(&self.idle).get_mut(&target).and_then(Vec::pop);
        if let Some(stream) = pooled {
            return Ok(stream);
        }
        let addr = self
            .addr(target)
            .ok_or_else(|| std::io::Error::other(format!("member {target} is not in the membership")))?;
        let dialed = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.dial(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))
            .flatten();
        if let Err(error) = &dialed {
            if error.kind() == std::io::ErrorKind::PermissionDenied {
                add(&self.counters.cluster_peers_refused, 1);
                tracing::warn!(member = target, %addr, %error, "cluster: member refused");
            }
        }
        dialed
    }

    /// Asks the instance at `addr` (not a member yet) for its view, on a connection of its own.
    ///
    /// # Errors
    /// When it cannot be reached, does not hold the secret or does not answer within `timeout`.
    pub async fn status_at(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<ClusterStatus> {
        let exchange = async {
            let mut stream = self.dial(addr).await?;
            write_frame(&mut stream, &Request::Status).await?;
            read_frame(&mut stream, FRAME_MAX).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Reply::Status(status))) => Ok(status),
            Ok(Ok(_)) => Err(std::io::Error::other(format!("{addr} answered another request"))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "it did not answer in time")),
        }
    }

    /// Sends `request` to `target` and waits up to `timeout` for the reply.
    async fn call(&self, target: RaftId, request: &Request, timeout: Duration) -> std::io::Result<Reply> {
        let exchange = async {
            let mut stream = self.connection(target).await?;
            write_frame(&mut stream, request).await?;
            let reply = read_frame(&mut stream, FRAME_MAX).await?;
            let mut idle = locked(&self.idle);
            let pool = idle.entry(target).or_default();
            if pool.len() < POOL {
                pool.push(stream);
            }
            Ok(reply)
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("member {target} did not answer in time"),
            )
        })?
    }

    /// Asks member `target` for its view of the cluster.
    ///
    /// # Errors
    /// When it cannot be reached or does not answer within `timeout`.
    pub async fn status(&self, target: RaftId, timeout: Duration) -> std::io::Result<ClusterStatus> {
        match self.call(target, &Request::Status, timeout).await? {
            Reply::Status(status) => Ok(status),
            _ => Err(std::io::Error::other(format!("member {target} answered another request"))),
        }
    }

    /// Sends member `target` the counters that changed; its acknowledgement.
    ///
    /// # Errors
    /// When it cannot be reached, does not answer within `timeout`, or does not count this
    /// member as a member (yet).
    pub async fn gossip(&self, target: RaftId, delta: Delta, timeout: Duration) -> std::io::Result<Ack> {
        match self.call(target, &Request::Gossip(delta), timeout).await? {
            Reply::Gossip(ack) => Ok(ack),
            Reply::NotMember => {
                Err(std::io::Error::other(format!("member {target} does not count this one a member")))
            }
            _ => Err(std::io::Error::other(format!("member {target} answered another request"))),
        }
    }

    /// Asks member `target` (the leader) to add or remove a member.
    ///
    /// # Errors
    /// When it cannot be reached or does not answer within `timeout`, or refuses.
    pub async fn change(
        &self,
        target: RaftId,
        change: Change,
        timeout: Duration,
    ) -> Result<String, ChangeRefused> {
        match self.call(target, &Request::Change(change), timeout).await {
            Ok(Reply::Change(outcome)) => outcome,
            Ok(_) => Err(ChangeRefused::Unavailable(format!(
                "the leader (member {target}) answered another request"
            ))),
            Err(error) => Err(ChangeRefused::Unavailable(format!("the leader (member {target}): {error}"))),
        }
    }

    /// Tells member `target` it was removed (it stops taking part).
    ///
    /// # Errors
    /// When it cannot be reached or does not answer within `timeout`.
    pub async fn removed(&self, target: RaftId, why: String, timeout: Duration) -> std::io::Result<()> {
        match self.call(target, &Request::Removed(why), timeout).await? {
            Reply::Removed => Ok(()),
            _ => Err(std::io::Error::other(format!("member {target} answered another request"))),
        }
    }

    /// Asks member `target` (the leader) to commit `proposal`.
    pub async fn propose(
        &self,
        target: RaftId,
        proposal: Proposal,
        timeout: Duration,
    ) -> Result<Committed, Refused> {
        match self.call(target, &Request::Propose(proposal), timeout).await {
            Ok(Reply::Propose(outcome)) => outcome,
            Ok(Reply::NotMember) => Err(Refused::NotMember(self.me)),
            Ok(_) => Err(Refused::Failed(format!("member {target} answered another request"))),
            Err(error) => Err(Refused::Failed(format!("member {target}: {error}"))),
        }
    }
}

/// The raft node's client to one member.
pub struct PeerClient {
    peers: Peers,
    target: RaftId,
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftId, node: &BasicNode) -> PeerClient {
        if let Some(addr) = address(target, node) {
            self.learn(target, addr);
        }
        PeerClient { peers: self.clone(), target }
    }
}

/// An I/O failure as openraft wants it: a refused connection means the member is down (back
/// off), anything else is retried at once.
fn failed<E: std::error::Error>(error: &std::io::Error) -> RPCError<RaftId, BasicNode, E> {
    if matches!(error.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::PermissionDenied) {
        RPCError::Unreachable(Unreachable::new(error))
    } else {
        RPCError::Network(NetworkError::new(error))
    }
}

fn unexpected<E: std::error::Error>(target: RaftId) -> RPCError<RaftId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "member {target} answered another request"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        match self.peers.call(self.target, &Request::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(Ok(response))) => Ok(response),
            Ok(Reply::Append(Err(error))) => Err(RPCError::RemoteError(RemoteError::new(self.target, error))),
            // Tried again after the backoff, as a member that is down.
            Ok(Reply::Refused(reason)) => {
                Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason))))
            }
            Ok(_) => Err(unexpected(self.target)),
            Err(error) => Err(failed(&error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, BasicNode, RaftError<RaftId, InstallSnapshotError>>,
    > {
        match self.peers.call(self.target, &Request::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(Ok(response))) => Ok(response),
            Ok(Reply::Snapshot(Err(error))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(_) => Err(unexpected(self.target)),
            Err(error) => Err(failed(&error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, BasicNode, RaftError<RaftId>>> {
        match self.peers.call(self.target, &Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(response))) => Ok(response),
            Ok(Reply::Vote(Err(error))) => Err(RPCError::RemoteError(RemoteError::new(self.target, error))),
            Ok(_) => Err(unexpected(self.target)),
            Err(error) => Err(failed(&error)),
        }
    }

    fn backoff(&self) -> Backoff {
        // A member that is down is tried again soon: it may be a restart.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_without_the_secret_is_refused_and_one_with_it_admitted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_key = hmac::Key::new(hmac::HMAC_SHA256, b"the right secret, 32 bytes long!");
        let server = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                outcomes.push(server_handshake(&mut stream, &server_key).await.map_err(|e| e.kind()));
            }
            outcomes
        });
        let wrong = hmac::Key::new(hmac::HMAC_SHA256, b"a wrong secret of the same size!");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let error = client_handshake(&mut stream, &wrong, 5).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied, "the server's proof fails too");
        drop(stream);
        let right = hmac::Key::new(hmac::HMAC_SHA256, b"the right secret, 32 bytes long!");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        client_handshake(&mut stream, &right, 6).await.unwrap();
        let outcomes = server.await.unwrap();
        assert!(outcomes[0].is_err(), "the server refuses the client without the secret");
        assert_eq!(outcomes[1], Ok(6));
    }

    #[tokio::test]
    async fn over_tls_a_certificate_of_the_cluster_ca_is_admitted_and_any_other_refused_and_counted() {
        use super::super::tls::{PeerTls, testing::Ca};
        let dir = tempfile::tempdir().unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let ca = Ca::new("cluster CA");
        let load = |files| PeerTls::load(&files, ip).unwrap();
        let server_tls = load(ca.member(dir.path(), "server", "127.0.0.1", None));
        let member_files = ca.member(dir.path(), "member", "127.0.0.1", None);
        let member = load(member_files.clone());
        let other_ca = Ca::new("another CA");
        let foreign = load(other_ca.member(dir.path(), "foreign", "127.0.0.1", None));
        // One that trusts the cluster CA but whose own certificate another CA signed.
        let impostor_files = other_ca.member(dir.path(), "impostor", "127.0.0.1", None);
        let impostor = {
            let chain = crate::http::trusted_certificates(&impostor_files.cert).unwrap();
            let key = crate::http::private_key(&impostor_files.key).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(crate::http::trusted_certificates(&member_files.ca).unwrap());
            let config =
                ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .unwrap();
            Arc::new(config)
        };

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = Secret(Arc::from(&b"the right secret, 32 bytes long!"[..]));
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.bytes());
        let acceptor = TlsAcceptor::from(server_tls.server);
        let server = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..4 {
                let (stream, _) = listener.accept().await.unwrap();
                outcomes.push(accept(stream, Some(&acceptor), &key).await.map(|_| ()).map_err(|e| e.kind()));
            }
            outcomes
        });
        let counters = Arc::new(Counters::default());
        let dial = |tls: Option<Arc<ClientConfig>>| {
            let peers = Peers::new(9, &secret, BTreeMap::from([(1, addr)]), tls, &counters);
            async move { peers.connection(1).await.map(|_| ()).map_err(|e| e.kind()) }
        };
        let denied = Err(std::io::ErrorKind::PermissionDenied);
        assert_eq!(dial(Some(foreign.client)).await, denied, "the server is not of its CA");
        assert_eq!(counters.cluster_peers_refused.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(dial(Some(impostor)).await.is_err(), "the server refuses its certificate");
        assert!(dial(None).await.is_err(), "plain TCP to a TLS member");
        assert_eq!(dial(Some(member.client)).await, Ok(()));
        let outcomes = server.await.unwrap();
        assert_eq!(
            outcomes,
            [denied, denied, denied, Ok(())],
            "refused: a client that refuses the server, a certificate of another CA, plain TCP"
        );
    }
}
