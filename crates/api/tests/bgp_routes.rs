//! `GET /v1/vpn-connections/{id}/bgp-routes` and the `origin: bgp` entries of the route
//! table, through the router (`oneshot`, no sockets) on a real SQLite store. The node's
//! part (writing what the sessions learned) is played by writing to the store directly.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use api::AppState;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use model::{BgpOrigin, BgpRoute, BgpRoutes, BgpSessionState, BgpStatus, TunnelStatus};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "bgp-test-token";

struct Api {
    app: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store::SqliteStore::open(&dir.path().join("data")).unwrap());
        let state = AppState::new(store, TOKEN.into());
        Api {
            app: api::router(state.clone()),
            state,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, uri: &str) -> Value {
        let (s, v) = self.call("GET", uri, Some(TOKEN), None).await;
        assert_eq!(s, StatusCode::OK, "GET {uri}: {v}");
        v
    }

    async fn post(&self, uri: &str, body: Value) -> Value {
        let (s, v) = self.call("POST", uri, Some(TOKEN), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "POST {uri}: {v}");
        v
    }

    /// A gateway, a customer gateway with an ASN and a dual-tunnel BGP connection:
    /// (gateway ID, connection).
    async fn bgp_connection(&self, enable_bgp: bool) -> (String, Value) {
        let gw = self
            .post(
                "/v1/vpn-gateways",
                json!({"name": "hq", "ipsec_addresses": ["192.0.2.1", "192.0.2.2"], "local_networks": ["172.16.0.0/16"]}),
            )
            .await;
        let cgw = self
            .post(
                "/v1/customer-gateways",
                json!({"name": "branch", "ip_address": "203.0.113.7", "asn": 65530}),
            )
            .await;
        let conn = self
            .post(
                "/v1/vpn-connections",
                json!({"name": "c", "vpn_gateway_id": gw["id"], "enable_bgp": enable_bgp, "tunnels": [
                    {"customer_gateway_id": cgw["id"], "bgp": {"tunnel_cidr": "169.254.10.0/30", "local_ip": "169.254.10.1"}},
                    {"customer_gateway_id": cgw["id"], "bgp": {"tunnel_cidr": "169.254.11.0/30", "local_ip": "169.254.11.1"}}]}),
            )
            .await;
        (gw["id"].as_str().unwrap().to_string(), conn)
    }

    /// What the node writes for tunnel `t` of `conn`: an established session and routes.
    async fn node_writes(&self, conn: &Value, t: usize, routes: &BgpRoutes) {
        let id = conn["tunnels"][t]["id"].as_str().unwrap();
        let status = TunnelStatus {
            bgp: Some(BgpStatus {
                state: BgpSessionState::Established,
                peer_asn: Some(65530),
                routes_received: routes.received.len() as u64,
                routes_advertised: routes.advertised.len() as u64,
                established_at: Some(chrono::Utc::now()),
                uptime_s: None,
            }),
            ..Default::default()
        };
        self.state
            .store
            .set_tunnel_status(id, &status)
            .await
            .unwrap();
        self.state
            .store
            .set_tunnel_bgp_routes(id, routes)
            .await
            .unwrap();
    }
}

fn route(prefix: &str, as_path: &[u32], next_hop: &str, best: bool) -> BgpRoute {
    BgpRoute {
        prefix: prefix.parse().unwrap(),
        as_path: as_path.to_vec(),
        next_hop: Some(next_hop.parse().unwrap()),
        origin: BgpOrigin::Igp,
        med: None,
        best,
        ignored: None,
    }
}

fn session(tunnel: u8, best: bool) -> BgpRoutes {
    let peer = format!("169.254.1{tunnel}.2");
    let local = format!("169.254.1{tunnel}.1");
    BgpRoutes {
        received: vec![
            route("10.2.0.0/24", &[65530], &peer, best),
            BgpRoute {
                ignored: Some("the AS path holds our own AS 45104 (a loop)".into()),
                ..route("172.16.0.0/16", &[65530, 45104], &peer, false)
            },
        ],
        advertised: vec![route("172.16.0.0/16", &[45104], &local, true)],
    }
}

#[tokio::test]
async fn bgp_routes_need_the_token_and_a_known_connection() {
    let api = Api::new();
    let (_, conn) = api.bgp_connection(true).await;
    let uri = format!(
        "/v1/vpn-connections/{}/bgp-routes",
        conn["id"].as_str().unwrap()
    );
    let (s, v) = api.call("GET", &uri, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = api.call("GET", &uri, Some("wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api
        .call(
            "GET",
            "/v1/vpn-connections/vco-nope/bgp-routes",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "NotFound", "{v}");
    let doc = api.get("/v1/openapi.json").await;
    let op = &doc["paths"]["/v1/vpn-connections/{id}/bgp-routes"]["get"];
    assert!(op["responses"]["200"].is_object(), "{op:#}");
    assert!(doc["components"]["schemas"]["BgpRoute"].is_object());
}

#[tokio::test]
async fn bgp_routes_per_tunnel_received_and_advertised() {
    let api = Api::new();
    let (_, conn) = api.bgp_connection(true).await;
    let uri = format!(
        "/v1/vpn-connections/{}/bgp-routes",
        conn["id"].as_str().unwrap()
    );
    // Before the node reported anything: every tunnel, idle, no routes.
    let v = api.get(&uri).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v:#}");
    assert_eq!(items[0]["tunnel_id"], conn["tunnels"][0]["id"]);
    assert_eq!(items[0]["role"], "primary");
    assert_eq!(items[1]["role"], "secondary");
    assert_eq!(items[0]["state"], "idle");
    assert_eq!(items[0]["received"], json!([]));
    assert_eq!(items[0]["advertised"], json!([]));

    api.node_writes(&conn, 0, &session(0, true)).await;
    api.node_writes(&conn, 1, &session(1, false)).await;
    let v = api.get(&uri).await;
    let t1 = &v["items"][0];
    assert_eq!(t1["state"], "established", "{v:#}");
    assert_eq!(t1["peer_asn"], 65530);
    assert_eq!(
        t1["received"][0],
        json!({"prefix": "10.2.0.0/24", "as_path": [65530], "next_hop": "169.254.10.2",
               "origin": "igp", "med": null, "best": true})
    );
    assert_eq!(t1["received"][1]["best"], false);
    assert!(
        t1["received"][1]["ignored"]
            .as_str()
            .unwrap()
            .contains("loop")
    );
    assert_eq!(
        t1["advertised"][0],
        json!({"prefix": "172.16.0.0/16", "as_path": [45104], "next_hop": "169.254.10.1",
               "origin": "igp", "med": null, "best": true})
    );
    assert_eq!(v["items"][1]["received"][0]["best"], false);
    // status.bgp has the uptime.
    let c = api
        .get(&format!(
            "/v1/vpn-connections/{}",
            conn["id"].as_str().unwrap()
        ))
        .await;
    let b = &c["tunnels"][0]["status"]["bgp"];
    assert_eq!(b["state"], "established", "{b:#}");
    assert!(b["uptime_s"].as_u64().is_some(), "{b:#}");
    assert!(b["established_at"].is_string(), "{b:#}");
}

#[tokio::test]
async fn route_table_lists_learned_routes_with_origin_bgp_below_static() {
    let api = Api::new();
    let (gw, conn) = api.bgp_connection(true).await;
    let conn_id = conn["id"].as_str().unwrap();
    api.node_writes(&conn, 0, &session(0, true)).await;
    api.node_writes(&conn, 1, &session(1, false)).await;
    let table = format!("/v1/vpn-gateways/{gw}/route-table");
    let v = api.get(&table).await;
    let bgp: Vec<&Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["origin"] == "bgp")
        .collect();
    // The looped route is not there; the prefix once per tunnel that learned it.
    assert_eq!(bgp.len(), 2, "{v:#}");
    assert_eq!(bgp[0]["destination"], "10.2.0.0/24");
    assert_eq!(bgp[0]["next_hop"], conn_id);
    assert_eq!(bgp[0]["tunnel_id"], conn["tunnels"][0]["id"]);
    assert_eq!(bgp[0]["state"], "active", "{v:#}");
    assert!(bgp[0]["reason"].as_str().unwrap().contains("AS path 65530"));
    assert_eq!(bgp[1]["tunnel_id"], conn["tunnels"][1]["id"]);
    assert_eq!(bgp[1]["state"], "standby", "{v:#}");

    // A static route of the same prefix wins over the learned one.
    api.post(
        &format!("/v1/vpn-gateways/{gw}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id}),
    )
    .await;
    let v = api.get(&table).await;
    let items = v["items"].as_array().unwrap();
    let stat = items.iter().find(|e| e["origin"] == "static").unwrap();
    assert_eq!(stat["state"], "active", "{v:#}");
    for e in items.iter().filter(|e| e["origin"] == "bgp") {
        assert_eq!(e["state"], "inactive", "{v:#}");
        assert!(
            e["reason"].as_str().unwrap().contains("static route"),
            "{e}"
        );
    }

    // Routes withdrawn (the node writes empty routes): gone from the table.
    api.node_writes(&conn, 0, &BgpRoutes::default()).await;
    api.node_writes(&conn, 1, &BgpRoutes::default()).await;
    let v = api.get(&table).await;
    assert!(
        !v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["origin"] == "bgp"),
        "{v:#}"
    );
}

#[tokio::test]
async fn without_enable_bgp_nothing_learned_is_shown() {
    let api = Api::new();
    let (gw, conn) = api.bgp_connection(false).await;
    // Left over from when BGP was on.
    api.node_writes(&conn, 0, &session(0, true)).await;
    let v = api
        .get(&format!(
            "/v1/vpn-connections/{}/bgp-routes",
            conn["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(v["items"][0]["received"], json!([]), "{v:#}");
    assert_eq!(v["items"][0]["state"], "idle", "{v:#}");
    let v = api.get(&format!("/v1/vpn-gateways/{gw}/route-table")).await;
    assert!(
        !v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["origin"] == "bgp"),
        "{v:#}"
    );
}

/// The BGP options on create and PATCH: off by default and shown in GET, each
/// refused with a 400 naming it when BGP is off (or, for ECMP, with one tunnel), and
/// changeable later; the OpenAPI document lists them.
#[tokio::test]
async fn bgp_options_validate_persist_and_show() {
    let api = Api::new();
    let (gw, conn) = api.bgp_connection(true).await;
    let id = conn["id"].as_str().unwrap().to_string();
    for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
        assert_eq!(conn[k], false, "{k}: {conn:#}");
    }
    let uri = format!("/v1/vpn-connections/{id}");
    let (s, v) = api
        .call(
            "PATCH",
            &uri,
            Some(TOKEN),
            Some(json!({"bgp_ecmp": true, "bgp_advertise_learned": true, "bgp_override_static": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = api.get(&uri).await;
    for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
        assert_eq!(got[k], true, "{k}: {got:#}");
    }
    // No tunnel renegotiates for a routing option.
    assert!(
        got["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "active"),
        "{got:#}"
    );
    // Turning BGP off while an option is on: 400 naming the option.
    let (s, v) = api
        .call(
            "PATCH",
            &uri,
            Some(TOKEN),
            Some(json!({"enable_bgp": false})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "bgp_ecmp", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("enable_bgp"),
        "{v}"
    );
    // Wrong type: 400 as well.
    let (s, v) = api
        .call(
            "PATCH",
            &uri,
            Some(TOKEN),
            Some(json!({"bgp_override_static": "yes"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Create without BGP but with an option.
    let cgw = api
        .post(
            "/v1/customer-gateways",
            json!({"name": "b2", "ip_address": "203.0.113.9"}),
        )
        .await;
    for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
        let (s, v) = api
            .call(
                "POST",
                "/v1/vpn-connections",
                Some(TOKEN),
                Some(json!({"name": "x", "vpn_gateway_id": gw, "customer_gateway_id": cgw["id"], k: true})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{k}: {v}");
        assert_eq!(v["error"]["field"], k, "{v}");
    }
    let doc = api.get("/v1/openapi.json").await;
    let props = &doc["components"]["schemas"]["VpnConnection"]["properties"];
    for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
        assert_eq!(props[k]["type"], "boolean", "{k} in OpenAPI: {props:#}");
    }
}

/// `bgp_override_static`: the learned route is active and the static route of the same
/// destination inactive, saying why.
#[tokio::test]
async fn route_table_learned_route_overrides_static_when_configured() {
    let api = Api::new();
    let (gw, conn) = api.bgp_connection(true).await;
    let id = conn["id"].as_str().unwrap().to_string();
    api.post(
        &format!("/v1/vpn-gateways/{gw}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": id}),
    )
    .await;
    let routes = BgpRoutes {
        received: vec![route("10.2.0.0/24", &[65530], "169.254.10.2", true)],
        advertised: vec![],
    };
    api.node_writes(&conn, 0, &routes).await;
    let states = |t: &Value| -> Vec<(String, String)> {
        t["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["destination"] == "10.2.0.0/24")
            .map(|e| {
                (
                    e["origin"].as_str().unwrap().to_string(),
                    e["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let table = format!("/v1/vpn-gateways/{gw}/route-table");
    let t = api.get(&table).await;
    assert_eq!(
        states(&t),
        [
            ("static".into(), "active".into()),
            ("bgp".into(), "inactive".into())
        ],
        "{t:#}"
    );
    let (s, v) = api
        .call(
            "PATCH",
            &format!("/v1/vpn-connections/{id}"),
            Some(TOKEN),
            Some(json!({"bgp_override_static": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = api.get(&table).await;
    assert_eq!(
        states(&t),
        [
            ("static".into(), "inactive".into()),
            ("bgp".into(), "active".into())
        ],
        "{t:#}"
    );
}
