//! openraft's network half: Raft messages to peers over the internal RPC client.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use ringstore_meta::{MetaNode, NodeId, TypeConfig};
use ringstore_rpc::{Client, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// Creates one [`Peer`] per replication target.
pub(crate) struct Network {
    pub(crate) client: Client,
    pub(crate) id: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &MetaNode) -> Peer {
        Peer {
            client: self.client.clone(),
            from: self.id,
            target,
            node: node.clone(),
        }
    }
}

/// The connection to one peer. The HTTP/2 pool is shared, so this is only an address book entry.
pub(crate) struct Peer {
    client: Client,
    from: NodeId,
    target: NodeId,
    node: MetaNode,
}

impl Peer {
    /// Sends one Raft message. The handler answers 200 with `Result<Resp, RaftError<E>>`, so a
    /// Raft-level refusal travels as a remote error while transport failures stay local.
    async fn send<Req, Resp, E>(
        &self,
        path: &str,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MetaNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let body = ringstore_rpc::encode(req);
        let bytes = self
            .client
            .call_raw_with(&self.node.rpc_addr, axum::http::Method::POST, path, body, ttl)
            .await
            .map_err(|e| self.transport_error(action, ttl, e))?;
        let reply: Result<Resp, RaftError<NodeId, E>> =
            ringstore_rpc::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply
            .map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    fn transport_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        e: RpcError,
    ) -> RPCError<NodeId, MetaNode, RaftError<NodeId, E>> {
        match e {
            RpcError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            }),
            // A peer with another secret will not change its mind soon: back off like for a
            // dead peer, and say so, since it means a misconfigured cluster.
            RpcError::Unauthorized(_) => {
                tracing::warn!(peer = %self.node.name, addr = %self.node.rpc_addr,
                    "peer refused our cluster secret");
                RPCError::Unreachable(Unreachable::new(&e))
            }
            // 503 is a node that is shutting down: as good as gone.
            RpcError::Unreachable { .. } | RpcError::Remote { status: 503, .. } => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            RpcError::Remote { .. } | RpcError::Decode(_) => {
                RPCError::Network(NetworkError::from(AnyError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.send(PATH_APPEND, RPCTypes::AppendEntries, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MetaNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(PATH_SNAPSHOT, RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MetaNode, RaftError<NodeId>>> {
        self.send(PATH_VOTE, RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Shorter than openraft's 500 ms so a restarted peer is picked up again quickly; the
        // control plane is tiny, so retrying often costs nothing.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}
