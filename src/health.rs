//! Active health checks: for each peer of a group with `health_check`, a
//! task asks `path` every `interval`; `fall` failed checks in a row mark the
//! peer unhealthy (the balancers skip it), `rise` good ones bring it back.
//!
//! The verdict lives in the peer's shared state, so it survives a reload;
//! the tasks belong to one configuration and are replaced with it.

use crate::compile::upstream::HealthCheck;
use crate::forward::{RequestBody, UpstreamRuntime};
use http::{Request, Uri};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Start the checks of every group that has them.
pub fn spawn_checks(upstreams: &[UpstreamRuntime]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for rt in upstreams {
        let Some(check) = rt.upstream.health_check.clone() else {
            continue;
        };
        let check = Arc::new(check);
        for index in 0..rt.balancer.peers.len() {
            let balancer = rt.balancer.clone();
            let client = rt.client.clone();
            let pool_authority = rt.pool_authority(index).clone();
            let tls_client = rt.tls_client.clone().filter(|_| rt.used_with_https);
            let check = check.clone();
            let name = rt.upstream.name.clone();
            tasks.push(tokio::spawn(async move {
                let peer = &balancer.peers[index];
                let mut good_in_row = 0u32;
                let mut bad_in_row = 0u32;
                let mut ticker = tokio::time::interval(check.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                                        let verdict = match &tls_client {
                        Some(tls) => probe(tls, "https", peer.addr.to_string(), peer.addr, &check).await,
                        None => probe(&client, "http", pool_authority.to_string(), peer.addr, &check).await,
                    };
                    let healthy = peer.state.is_healthy();
                    match verdict {
                        Ok(()) => {
                            bad_in_row = 0;
                            good_in_row += 1;
                            if !healthy && good_in_row >= check.rise {
                                peer.state.set_healthy(true);
                                tracing::info!(upstream = %name, peer = %peer.addr, "health check: server is back");
                            }
                        }
                        Err(why) => {
                            good_in_row = 0;
                            bad_in_row += 1;
                            if healthy && bad_in_row >= check.fall {
                                peer.state.set_healthy(false);
                                tracing::warn!(upstream = %name, peer = %peer.addr, "health check: server marked unhealthy: {why}");
                            }
                        }
                    }
                }
            }));
        }
    }
    tasks
}

/// One check: GET `path`, answered within `timeout` with a status in
/// `expect`; over TLS for a group that locations reach with `https://`.
/// `authority`: what the client's pool knows the server by (see
/// forward::PeerAliases); `addr`: the server, as the Host.
async fn probe<C>(
    client: &hyper_util::client::legacy::Client<C, RequestBody>,
    scheme: &str,
    authority: String,
    addr: std::net::SocketAddr,
    check: &HealthCheck,
) -> Result<(), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let uri: Uri = format!("{scheme}://{authority}{}", check.path)
        .parse()
        .map_err(|e| format!("bad check URI: {e}"))?;
    let mut request = Request::new(RequestBody::Full(None));
    *request.uri_mut() = uri;
    if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("ginx-health-check"),
    );
    let response = tokio::time::timeout(check.timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    // Read the body to its end so the connection goes back to the pool.
    let _ = tokio::time::timeout(
        check.timeout,
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await;
    if (check.expect.0..=check.expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}-{}",
            check.expect.0, check.expect.1
        ))
    }
}
