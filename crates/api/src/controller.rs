//! Controller-only mode (`vpngw serve --no-node`): no gateway node runs in the process,
//! so nothing would ever move resources out of `creating`/`updating`. Here the
//! controller applies its own desired state instead: gateways become `running` with a
//! `status_reason` saying that no node is attached, connections `running`, tunnels
//! `active` again after a change. Tunnel *status* (phases, SAs) stays untouched: only a
//! node observes tunnels. When a node runs, it owns these fields and this is not used.

use model::{ConnectionStatus, GatewayStatus, TunnelState, VpnGateway};
use store::{ListQuery, StoreError};

use crate::{ApiResult, AppState};

/// The `status_reason` of every gateway while no gateway node is attached.
pub const NO_NODE_REASON: &str = "no gateway node attached: the controller stores and serves the configuration, but this process negotiates no tunnels (vpngw serve --no-node)";

/// Applies the stored desired state once now and again after every change written
/// through the API, for as long as `state` lives. Spawn it when no node runs.
pub async fn run_without_node(state: AppState) {
    // Subscribe before the first pass so that no change in between is missed.
    let mut changes = state.subscribe();
    loop {
        if let Err(e) = apply_without_node(&state).await {
            tracing::warn!(error = %e.message, "applying the desired state (no gateway node)");
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// One pass of [`run_without_node`]: every gateway `running` with [`NO_NODE_REASON`],
/// connections in `creating`/`updating` `running`, tunnels in `updating` `active`.
pub async fn apply_without_node(state: &AppState) -> ApiResult<()> {
    for g in all_gateways(state).await? {
        if g.status == GatewayStatus::Deleting
            || (g.status == GatewayStatus::Running
                && g.status_reason.as_deref() == Some(NO_NODE_REASON))
        {
            continue;
        }
        gone_is_fine(
            state
                .store
                .set_gateway_status(&g.id, GatewayStatus::Running, Some(NO_NODE_REASON.into()))
                .await,
        )?;
    }
    // Only what is left to settle: all connections after every create was O(n²) to
    // create n connections (issue 8).
    for c in state.store.unsettled_connections().await? {
        if matches!(
            c.status,
            ConnectionStatus::Creating | ConnectionStatus::Updating
        ) {
            gone_is_fine(
                state
                    .store
                    .set_connection_status(&c.id, ConnectionStatus::Running)
                    .await,
            )?;
        }
        for t in c
            .tunnels
            .iter()
            .filter(|t| t.state == TunnelState::Updating)
        {
            gone_is_fine(
                state
                    .store
                    .set_tunnel_state(&t.id, TunnelState::Active)
                    .await,
            )?;
        }
    }
    Ok(())
}

/// A resource deleted since it was listed needs nothing more.
fn gone_is_fine(r: store::Result<()>) -> ApiResult<()> {
    match r {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every gateway, across pages.
pub(crate) async fn all_gateways(state: &AppState) -> ApiResult<Vec<VpnGateway>> {
    let mut q = ListQuery {
        page_size: ListQuery::MAX_PAGE_SIZE,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = state.store.list_gateways(&q).await?;
        out.extend(page.items);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(out),
        }
    }
}
