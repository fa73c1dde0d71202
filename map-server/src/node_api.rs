//! The node API: HTTP on the control address, inside the control tunnel
//! only (the listening socket is bound to the control interface, as the
//! LISP control socket is). Nodes fetch their relay grant here.
//!
//! Who asks is known without a password: WireGuard delivers a packet from
//! a control address only if it came from the key configured for it, so
//! the source address names the peer.
//!
//! `GET /v1/relay`: 200 with the node's [`relay::Grant`] (JSON), 404 when
//! this map-server has no relay, 403 for a source that is no keyed peer.

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use conf::map_server::{MapServerConfig, RelayConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

fn keyed_peers(cfg: &MapServerConfig) -> HashMap<IpAddr, String> {
    cfg.peers
        .iter()
        .filter(|p| p.public_key.is_some())
        .map(|p| (p.control_address, p.name.clone()))
        .collect()
}

/// A node's request to move to a new WireGuard key, for the event loop.
pub struct RotateRequest {
    /// Its control address: the old key vouches for the request.
    pub from: IpAddr,
    pub new_key: [u8; 32],
    /// `Ok` once correspondents have the new key: switch now.
    pub reply: tokio::sync::oneshot::Sender<Result<(), (StatusCode, String)>>,
}

/// What the node API serves, from the configuration.
pub struct NodeApi {
    /// Rotation requests, to the event loop.
    rotate: tokio::sync::mpsc::Sender<RotateRequest>,
    rotate_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<RotateRequest>>>,
    /// Keyed peers by control address (replaced at each reload).
    peers: std::sync::RwLock<HashMap<IpAddr, String>>,
    relay: Option<RelayConfig>,
    pub grants: AtomicU64,
    pub refused: AtomicU64,
}

impl NodeApi {
    pub fn new(cfg: &MapServerConfig) -> NodeApi {
        let (rotate, rx) = tokio::sync::mpsc::channel(16);
        NodeApi {
            rotate,
            rotate_rx: std::sync::Mutex::new(Some(rx)),
            peers: std::sync::RwLock::new(keyed_peers(cfg)),
            relay: cfg.relay.clone(),
            grants: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The event loop's end of the rotation requests (once).
    pub fn take_rotations(&self) -> Option<tokio::sync::mpsc::Receiver<RotateRequest>> {
        self.rotate_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The peers of a configuration taken live.
    pub fn set_peers(&self, cfg: &MapServerConfig) {
        let peers = keyed_peers(cfg);
        match self.peers.write() {
            Ok(mut p) => *p = peers,
            Err(poisoned) => *poisoned.into_inner() = peers,
        }
    }

    /// The grant for the node at control address `from`.
    pub fn grant_for(
        &self,
        from: IpAddr,
        now_unix: u64,
    ) -> Result<relay::Grant, (StatusCode, String)> {
        let Some(relay) = &self.relay else {
            return Err((
                StatusCode::NOT_FOUND,
                "this map-server has no relay\n".into(),
            ));
        };
        let name = {
            let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
            peers.get(&from).cloned()
        };
        let Some(name) = name else {
            return Err((StatusCode::FORBIDDEN, format!("{from} is no keyed peer\n")));
        };
        relay::Grant::issue(
            relay.secret.as_bytes(),
            &name,
            now_unix,
            relay.credential_ttl,
            relay.servers.clone(),
        )
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn relay_grant(
    State(api): State<Arc<NodeApi>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    match api.grant_for(from.ip(), unix_now()) {
        Ok(g) => {
            api.grants.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "relay grant issued");
            match serde_json::to_string(&g) {
                Ok(body) => ([("content-type", "application/json")], body).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        Err((code, why)) => {
            if code != StatusCode::NOT_FOUND {
                api.refused.fetch_add(1, Ordering::Relaxed);
                warn!(%from, reason = why.trim(), "relay grant refused");
            }
            (code, why).into_response()
        }
    }
}

/// `POST /v1/rotate` with the node's new public key (base64) as the body:
/// answered 200 once the map-server and the node's correspondents have the
/// new key (the node switches then), or with why not.
async fn rotate(
    State(api): State<Arc<NodeApi>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    let Ok(key) = wgctl::keys::PublicKey::from_base64(body.trim()) else {
        return (
            StatusCode::BAD_REQUEST,
            "the body is not a WireGuard public key\n",
        )
            .into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = RotateRequest {
        from: from.ip(),
        new_key: *key.as_bytes(),
        reply,
    };
    if api.rotate.send(req).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), answer).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, "rotated\n").into_response(),
        Ok(Ok(Err((code, why)))) => (code, why).into_response(),
        _ => (
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the map-server\n",
        )
            .into_response(),
    }
}

/// Serves the node API on `addr`, bound to interface `device`.
pub async fn serve(addr: SocketAddr, device: &str, api: Arc<NodeApi>) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.bind_device(Some(device.as_bytes()))?;
    s.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true)?,
        SocketAddr::V6(_) => s.set_freebind_v6(true)?,
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(64)?;
    let listener = tokio::net::TcpListener::from_std(s.into())?;
    info!(%addr, ifname = device, "node API inside the control tunnel");
    let app = Router::new()
        .route("/v1/relay", get(relay_grant))
        .route("/v1/rotate", axum::routing::post(rotate))
        .with_state(api);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            warn!(error = %e, "the node API stopped");
        }
    });
    Ok(())
}
