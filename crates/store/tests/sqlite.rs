//! The SQLite store on a real file in a temporary directory.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use model::*;
use rand::SeedableRng;
use store::{ClientToken, ListQuery, SqliteStore, Store, StoreError};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn gateway(id: &str, name: &str) -> VpnGateway {
    VpnGatewaySpec {
        name: Some(name.into()),
        ipsec_addresses: Some(vec!["192.0.2.1".into(), "192.0.2.2".into()]),
        local_networks: Some(vec!["10.0.0.0/16".into()]),
        ..Default::default()
    }
    .build(id.into(), now())
    .unwrap()
}

fn cgw(id: &str) -> CustomerGateway {
    CustomerGatewaySpec {
        name: Some(id.into()),
        ip_address: Some("203.0.113.7".into()),
        asn: Some(AsnInput::Number(65010)),
        ..Default::default()
    }
    .build(id.into(), now())
    .unwrap()
}

fn connection(
    id: &str,
    gw: &VpnGateway,
    cgws: &[CustomerGateway],
    cgw_ids: [&str; 2],
    bgp: Option<[&str; 2]>,
) -> VpnConnection {
    let tunnels = cgw_ids
        .iter()
        .enumerate()
        .map(|(i, c)| TunnelSpec {
            customer_gateway_id: Some(c.to_string()),
            bgp: bgp.map(|b| TunnelBgpSpec {
                tunnel_cidr: Some(b[i].into()),
                local_ip: Some(b[i].replace(".0/30", ".1")),
            }),
            ..Default::default()
        })
        .collect();
    let spec = VpnConnectionSpec {
        name: Some(format!("conn {id}")),
        vpn_gateway_id: Some(gw.id.clone()),
        tunnels: Some(tunnels),
        ..Default::default()
    };
    let ctx = ConnectionContext {
        gateway: gw,
        customer_gateways: cgws,
        tunnel_cidrs_in_use: &[],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(id.len() as u64);
    spec.build(
        &ctx,
        id.into(),
        &[format!("tun-{id}-1"), format!("tun-{id}-2")],
        now(),
        &mut rng,
    )
    .unwrap()
}

fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.path().join("data")).unwrap())
}

/// Gateway `vpn-a` and customer gateway `cgw-a`, stored: what most tests start from.
async fn stored_gateway_and_cgw(s: &Arc<dyn Store>) -> (VpnGateway, [CustomerGateway; 1]) {
    let gw = gateway("vpn-a", "hq");
    let cgws = [cgw("cgw-a")];
    s.create_gateway(&gw, None).await.unwrap();
    s.create_customer_gateway(&cgws[0], None).await.unwrap();
    (gw, cgws)
}

#[tokio::test]
async fn creates_private_data_dir_and_db_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = SqliteStore::open(&data).unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 6);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("vpngw.db")), 0o600);
    drop(s);
    let s = SqliteStore::open(&data).unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 6);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway("vpn-a", "hq");
    let c1 = cgw("cgw-a");
    let conn = connection(
        "vco-a",
        &gw,
        std::slice::from_ref(&c1),
        ["cgw-a", "cgw-a"],
        Some(["169.254.10.0/30", "169.254.11.0/30"]),
    );
    let psk = conn.tunnels[0].pre_shared_key.clone();
    {
        let s = open(&dir);
        s.create_gateway(&gw, None).await.unwrap();
        s.create_customer_gateway(&c1, None).await.unwrap();
        s.create_connection(&conn, None).await.unwrap();
        let route = RouteSpec {
            destination: Some("172.16.0.0/16".into()),
            next_hop: Some("vco-a".into()),
            ..Default::default()
        }
        .build(&gw, std::slice::from_ref(&conn), "vrt-1".into(), now())
        .unwrap();
        s.create_route(&route, None).await.unwrap();
        let status = TunnelStatus {
            phase: TunnelPhase::Established,
            carrying_traffic: true,
            ..Default::default()
        };
        s.set_tunnel_status("tun-vco-a-1", &status).await.unwrap();
        s.append_log(
            "vco-a",
            &LogEntry {
                at: now(),
                tunnel_id: Some("tun-vco-a-1".into()),
                level: LogLevel::Info,
                event: "ike_sa_established".into(),
                message: "IKE SA up".into(),
            },
        )
        .await
        .unwrap();
    }
    let s = open(&dir);
    let g = s.gateway("vpn-a").await.unwrap();
    assert_eq!(g.name, "hq");
    assert_eq!(g.connection_count, 1);
    assert_eq!(s.customer_gateway("cgw-a").await.unwrap().tunnel_count, 2);
    let c = s.connection("vco-a").await.unwrap();
    assert_eq!(c.tunnels.len(), 2);
    assert_eq!(c.tunnels[0].pre_shared_key, psk);
    assert_eq!(c.tunnels[0].status.phase, TunnelPhase::Established);
    assert_eq!(c.tunnels[1].status.phase, TunnelPhase::Idle);
    assert_eq!(c.connection_state, ConnectionState::Established);
    assert_eq!(s.routes("vpn-a").await.unwrap().len(), 1);
    assert_eq!(
        s.logs("vco-a", None, 10).await.unwrap()[0].event,
        "ike_sa_established"
    );
    assert_eq!(
        s.tunnel_connection("tun-vco-a-2").await.unwrap().id,
        "vco-a"
    );
    let counts = s.counts().await.unwrap();
    assert_eq!(
        (counts.vpn_gateways, counts.tunnels, counts.routes),
        (1, 2, 1)
    );
}

/// Migration 4 on a real file: a BGP connection written by a vpngw from before the BGP
/// options (schema 3, documents without them) reads back unchanged, with them off; the
/// options then persist like any other field.
#[tokio::test]
async fn bgp_options_migrate_from_schema_3_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway("vpn-a", "hq");
    let c1 = cgw("cgw-a");
    let mut conn = connection(
        "vco-a",
        &gw,
        std::slice::from_ref(&c1),
        ["cgw-a", "cgw-a"],
        Some(["169.254.10.0/30", "169.254.11.0/30"]),
    );
    conn.enable_bgp = true;
    let path = {
        let s = SqliteStore::open(dir.path()).unwrap();
        s.create_gateway(&gw, None).await.unwrap();
        s.create_customer_gateway(&c1, None).await.unwrap();
        s.create_connection(&conn, None).await.unwrap();
        s.path().to_path_buf()
    };
    // Back to what schema 3 wrote: no BGP options in the document.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "UPDATE vpn_connections SET doc = json_remove(doc, '$.bgp_ecmp',
                 '$.bgp_advertise_learned', '$.bgp_override_static');
             UPDATE schema_version SET version = 3;",
        )
        .unwrap();
        let doc: String = c
            .query_row("SELECT doc FROM vpn_connections", [], |r| r.get(0))
            .unwrap();
        assert!(!doc.contains("bgp_ecmp"), "{doc}");
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 6);
    let back = s.connection("vco-a").await.unwrap();
    assert_eq!(back, conn, "old data survives, options off");
    assert!(!back.bgp_ecmp && !back.bgp_advertise_learned && !back.bgp_override_static);

    let mut on = back.clone();
    on.bgp_ecmp = true;
    on.bgp_advertise_learned = true;
    on.bgp_override_static = true;
    s.update_connection(&on).await.unwrap();
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    let again = s.connection("vco-a").await.unwrap();
    assert!(again.bgp_ecmp && again.bgp_advertise_learned && again.bgp_override_static);
}

#[tokio::test]
async fn failed_connection_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let gw = gateway("vpn-a", "hq");
    s.create_gateway(&gw, None).await.unwrap();
    s.create_customer_gateway(&cgw("cgw-a"), None)
        .await
        .unwrap();
    // Tunnel 2 names a customer gateway that is not stored: the insert of tunnel 1 and
    // of the connection must be rolled back with it.
    let cgws = [cgw("cgw-a"), cgw("cgw-ghost")];
    let conn = connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-ghost"], None);
    let e = s.create_connection(&conn, None).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(matches!(
        s.connection("vco-a").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    let counts = s.counts().await.unwrap();
    assert_eq!((counts.vpn_connections, counts.tunnels), (0, 0));
    assert_eq!(s.customer_gateway("cgw-a").await.unwrap().tunnel_count, 0);
}

#[tokio::test]
async fn tunnel_cidrs_unique_per_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    let a = connection(
        "vco-a",
        &gw,
        &cgws,
        ["cgw-a", "cgw-a"],
        Some(["169.254.10.0/30", "169.254.11.0/30"]),
    );
    let b = connection(
        "vco-b",
        &gw,
        &cgws,
        ["cgw-a", "cgw-a"],
        Some(["169.254.12.0/30", "169.254.11.0/30"]),
    );
    s.create_connection(&a, None).await.unwrap();
    let e = s.create_connection(&b, None).await.unwrap_err();
    assert!(e.to_string().contains("169.254.11.0/30"), "{e}");
    assert_eq!(s.counts().await.unwrap().tunnels, 2);
}

#[tokio::test]
async fn deletes_in_use_are_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    let conn = connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-a"], None);
    s.create_connection(&conn, None).await.unwrap();
    let route = RouteSpec {
        destination: Some("172.16.0.0/16".into()),
        next_hop: Some("vco-a".into()),
        ..Default::default()
    }
    .build(&gw, std::slice::from_ref(&conn), "vrt-1".into(), now())
    .unwrap();
    s.create_route(&route, None).await.unwrap();
    let mut dup = route.clone();
    dup.id = "vrt-2".into();
    assert!(matches!(
        s.create_route(&dup, None).await,
        Err(StoreError::Conflict(_))
    ));

    assert!(matches!(
        s.delete_gateway("vpn-a").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_customer_gateway("cgw-a").await,
        Err(StoreError::Conflict(_))
    ));
    let e = s.delete_connection("vco-a").await.unwrap_err();
    assert!(e.to_string().contains("vrt-1"), "{e}");

    s.delete_route("vpn-a", "vrt-1").await.unwrap();
    assert!(matches!(
        s.delete_route("vpn-a", "vrt-1").await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete_connection("vco-a").await.unwrap();
    s.delete_customer_gateway("cgw-a").await.unwrap();
    s.delete_gateway("vpn-a").await.unwrap();
    assert_eq!(s.counts().await.unwrap(), store::Counts::default());
}

#[tokio::test]
async fn update_connection_keeps_observed_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    let mut conn = connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-a"], None);
    s.create_connection(&conn, None).await.unwrap();
    let st = TunnelStatus {
        phase: TunnelPhase::Phase1Failed,
        reason: Some("no proposal chosen".into()),
        ..Default::default()
    };
    s.set_tunnel_status("tun-vco-a-2", &st).await.unwrap();
    conn.name = "renamed".into();
    conn.tunnels[1].pre_shared_key = Psk::parse("NewKey123").unwrap();
    conn.tunnels[1].state = TunnelState::Updating;
    s.update_connection(&conn).await.unwrap();
    let c = s.connection("vco-a").await.unwrap();
    assert_eq!(c.name, "renamed");
    assert_eq!(c.tunnels[1].pre_shared_key.expose(), "NewKey123");
    assert_eq!(c.tunnels[1].status, st);
    assert_eq!(c.tunnels[1].state, TunnelState::Updating);
    assert_eq!(c.connection_state, ConnectionState::Down);
    s.set_tunnel_state("tun-vco-a-2", TunnelState::Active)
        .await
        .unwrap();
    s.set_connection_status("vco-a", ConnectionStatus::Running)
        .await
        .unwrap();
    let c = s.connection("vco-a").await.unwrap();
    assert_eq!(c.tunnels[1].state, TunnelState::Active);
    assert_eq!(c.status, ConnectionStatus::Running);
    s.set_gateway_status(
        "vpn-a",
        GatewayStatus::Error,
        Some("address not on this node".into()),
    )
    .await
    .unwrap();
    let g = s.gateway("vpn-a").await.unwrap();
    assert_eq!(g.status, GatewayStatus::Error);
    assert_eq!(g.status_reason.as_deref(), Some("address not on this node"));
    assert!(matches!(
        s.set_tunnel_status("tun-nope", &st).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn client_tokens_are_claimed_once_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let token = |at: DateTime<Utc>| ClientToken {
        scope: "POST /v1/vpn-gateways".into(),
        token: "retry-1".into(),
        request_hash: "h1".into(),
        created_at: at,
    };
    s.create_gateway(&gateway("vpn-a", "a"), Some(&token(now())))
        .await
        .unwrap();
    let e = s
        .create_gateway(&gateway("vpn-b", "b"), Some(&token(now())))
        .await
        .unwrap_err();
    let StoreError::ClientTokenTaken(first) = e else {
        panic!("expected ClientTokenTaken, got {e}")
    };
    assert_eq!(first.resource_id, "vpn-a");
    assert_eq!(first.token.request_hash, "h1");
    assert!(matches!(
        s.gateway("vpn-b").await,
        Err(StoreError::NotFound { .. })
    ));
    let found = s
        .client_token("POST /v1/vpn-gateways", "retry-1", now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.resource_id, "vpn-a");
    // Another scope is another token.
    assert!(
        s.client_token("POST /v1/customer-gateways", "retry-1", now())
            .await
            .unwrap()
            .is_none()
    );
    // After 24 h the token is free again.
    let later = now() + Duration::hours(25);
    assert!(
        s.client_token("POST /v1/vpn-gateways", "retry-1", later)
            .await
            .unwrap()
            .is_none()
    );
    s.create_gateway(&gateway("vpn-b", "b"), Some(&token(later)))
        .await
        .unwrap();
    assert_eq!(
        s.purge_client_tokens(later + Duration::hours(25))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn lists_filter_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..7 {
        let mut g = gateway(
            &format!("vpn-{i}"),
            &format!("{} gw {i}", if i % 2 == 0 { "Prod" } else { "test" }),
        );
        g.tags.insert(
            "env".into(),
            if i % 2 == 0 { "prod" } else { "test" }.into(),
        );
        s.create_gateway(&g, None).await.unwrap();
    }
    let mut q = ListQuery {
        page_size: 3,
        ..Default::default()
    };
    let mut seen = vec![];
    loop {
        let page = s.list_gateways(&q).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|g| g.id.clone()));
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("vpn-{i}")).collect::<Vec<_>>());

    let q = ListQuery {
        name_contains: Some("prod".into()),
        ..Default::default()
    };
    assert_eq!(s.list_gateways(&q).await.unwrap().items.len(), 4);
    let q = ListQuery {
        tags: vec![("env".into(), "test".into())],
        page_size: 2,
        ..Default::default()
    };
    let p = s.list_gateways(&q).await.unwrap();
    assert_eq!(
        p.items.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        ["vpn-1", "vpn-3"]
    );
    let p2 = s
        .list_gateways(&ListQuery {
            page_token: p.next_page_token,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.next_page_token, None);
    let bad = ListQuery {
        page_token: Some("zzz".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.list_gateways(&bad).await,
        Err(StoreError::InvalidPageToken)
    ));
}

#[tokio::test]
async fn logs_since_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    s.create_connection(
        &connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-a"], None),
        None,
    )
    .await
    .unwrap();
    for i in 0..5 {
        s.append_log(
            "vco-a",
            &LogEntry {
                at: now() + Duration::seconds(i),
                tunnel_id: None,
                level: LogLevel::Info,
                event: format!("e{i}"),
                message: "m".into(),
            },
        )
        .await
        .unwrap();
    }
    let events = |v: Vec<LogEntry>| v.into_iter().map(|e| e.event).collect::<Vec<_>>();
    assert_eq!(
        events(s.logs("vco-a", None, 2).await.unwrap()),
        ["e3", "e4"]
    );
    assert_eq!(
        events(
            s.logs("vco-a", Some(now() + Duration::seconds(1)), 2)
                .await
                .unwrap()
        ),
        ["e1", "e2"]
    );
    assert!(matches!(
        s.logs("vco-nope", None, 2).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn tunnel_event_counts_grow_per_tunnel_and_go_with_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    for id in ["vco-a", "vco-b"] {
        s.create_connection(&connection(id, &gw, &cgws, ["cgw-a", "cgw-a"], None), None)
            .await
            .unwrap();
    }
    let log = |conn: &'static str, tunnel: Option<&'static str>, event: &'static str| {
        let s = Arc::clone(&s);
        async move {
            s.append_log(
                conn,
                &LogEntry {
                    at: now(),
                    tunnel_id: tunnel.map(str::to_string),
                    level: LogLevel::Info,
                    event: event.into(),
                    message: "m".into(),
                },
            )
            .await
            .unwrap();
        }
    };
    log("vco-a", Some("tun-vco-a-1"), "phase1_established").await;
    log("vco-a", Some("tun-vco-a-1"), "phase1_established").await;
    log("vco-a", Some("tun-vco-a-1"), "phase2_failed").await;
    log("vco-a", Some("tun-vco-a-2"), "phase1_failed").await;
    // Not counted: no tunnel, or a tunnel of another connection.
    log("vco-a", None, "config_changed").await;
    log("vco-a", Some("tun-vco-b-1"), "phase1_failed").await;
    log("vco-b", Some("tun-vco-b-2"), "phase2_established").await;
    let counts = |v: Vec<store::EventCount>| {
        v.into_iter()
            .map(|e| (e.connection_id, e.tunnel_id, e.event, e.count))
            .collect::<Vec<_>>()
    };
    let c = |a: &str, b: &str, e: &str, n: u64| (a.to_string(), b.to_string(), e.to_string(), n);
    assert_eq!(
        counts(s.tunnel_event_counts().await.unwrap()),
        [
            c("vco-a", "tun-vco-a-1", "phase1_established", 2),
            c("vco-a", "tun-vco-a-1", "phase2_failed", 1),
            c("vco-a", "tun-vco-a-2", "phase1_failed", 1),
            c("vco-b", "tun-vco-b-2", "phase2_established", 1),
        ]
    );
    s.delete_connection("vco-a").await.unwrap();
    assert_eq!(
        counts(s.tunnel_event_counts().await.unwrap()),
        [c("vco-b", "tun-vco-b-2", "phase2_established", 1)]
    );
}

#[tokio::test]
async fn bgp_routes_per_tunnel_beside_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    let conn = connection(
        "vco-a",
        &gw,
        &cgws,
        ["cgw-a", "cgw-a"],
        Some(["169.254.10.0/30", "169.254.11.0/30"]),
    );
    s.create_connection(&conn, None).await.unwrap();
    // A new tunnel has none.
    let empty = s.connection_bgp_routes("vco-a").await.unwrap();
    assert_eq!(
        empty,
        [
            ("tun-vco-a-1".to_string(), BgpRoutes::default()),
            ("tun-vco-a-2".to_string(), BgpRoutes::default())
        ]
    );
    let r = BgpRoute {
        prefix: "10.2.0.0/24".parse().unwrap(),
        as_path: vec![65010],
        next_hop: Some("169.254.11.2".parse().unwrap()),
        origin: BgpOrigin::Igp,
        med: Some(5),
        best: true,
        ignored: None,
    };
    let routes = BgpRoutes {
        received: vec![r.clone()],
        advertised: vec![],
    };
    s.set_tunnel_bgp_routes("tun-vco-a-2", &routes)
        .await
        .unwrap();
    // The status is written separately and leaves the routes alone.
    let st = TunnelStatus {
        phase: TunnelPhase::Established,
        bgp: Some(BgpStatus {
            state: BgpSessionState::Established,
            peer_asn: Some(65010),
            routes_received: 1,
            routes_advertised: 1,
            established_at: Some(Utc::now() - Duration::seconds(90)),
            uptime_s: None,
        }),
        ..Default::default()
    };
    s.set_tunnel_status("tun-vco-a-2", &st).await.unwrap();
    // A configuration change keeps them too.
    let mut changed = conn.clone();
    changed.name = "renamed".into();
    s.update_connection(&changed).await.unwrap();
    let got = s.connection_bgp_routes("vco-a").await.unwrap();
    assert_eq!(got[1], ("tun-vco-a-2".to_string(), routes));
    assert_eq!(got[0].1, BgpRoutes::default());
    // Uptime is computed when read.
    let c = s.connection("vco-a").await.unwrap();
    let up = c.tunnels[1].status.bgp.as_ref().unwrap().uptime_s.unwrap();
    assert!((90..100).contains(&up), "{up}");
    assert!(matches!(
        s.connection_bgp_routes("vco-nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_tunnel_bgp_routes("tun-nope", &BgpRoutes::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn observed_batch_applies_each_write_on_its_own_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    s.create_connection(
        &connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-a"], None),
        None,
    )
    .await
    .unwrap();
    let status = |phase: TunnelPhase| TunnelStatus {
        phase,
        reason: Some(format!("{phase:?}")),
        ..Default::default()
    };
    let log = |conn: &str, event: &str| store::Observed::Log {
        connection_id: conn.into(),
        entry: LogEntry {
            at: now(),
            tunnel_id: Some("tun-vco-a-1".into()),
            level: LogLevel::Info,
            event: event.into(),
            message: "m".into(),
        },
    };
    let st = |tunnel: &str, phase| store::Observed::TunnelStatus {
        tunnel_id: tunnel.into(),
        status: status(phase),
    };
    let batch = [
        st("tun-vco-a-1", TunnelPhase::Phase1Negotiating),
        log("vco-a", "phase1_established"),
        // A tunnel and a connection deleted meanwhile: NotFound, the rest still lands.
        st("tun-gone", TunnelPhase::Established),
        log("vco-gone", "phase1_established"),
        st("tun-vco-a-1", TunnelPhase::Established),
        log("vco-a", "phase2_established"),
    ];
    let results = s.record_observed(&batch).await;
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, true, true]);
    assert!(matches!(results[2], Err(StoreError::NotFound { .. })));
    assert!(matches!(results[3], Err(StoreError::NotFound { .. })));
    // The later status of the same tunnel wins (order kept).
    let c = s.connection("vco-a").await.unwrap();
    assert_eq!(c.tunnels[0].status.phase, TunnelPhase::Established);
    let events: Vec<String> = s
        .logs("vco-a", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["phase1_established", "phase2_established"]);
    assert_eq!(s.tunnel_event_counts().await.unwrap().len(), 2);
    assert!(s.logs("vco-gone", None, 10).await.is_err());
}

#[tokio::test]
async fn unsettled_connections_are_those_in_transition() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (gw, cgws) = stored_gateway_and_cgw(&s).await;
    for id in ["vco-a", "vco-b", "vco-c", "vco-d"] {
        s.create_connection(&connection(id, &gw, &cgws, ["cgw-a", "cgw-a"], None), None)
            .await
            .unwrap();
    }
    let ids = |v: Vec<VpnConnection>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    // New connections are `creating`.
    assert_eq!(
        ids(s.unsettled_connections().await.unwrap()),
        ["vco-a", "vco-b", "vco-c", "vco-d"]
    );
    for id in ["vco-a", "vco-b", "vco-c", "vco-d"] {
        s.set_connection_status(id, ConnectionStatus::Running)
            .await
            .unwrap();
    }
    assert!(s.unsettled_connections().await.unwrap().is_empty());
    s.set_connection_status("vco-c", ConnectionStatus::Updating)
        .await
        .unwrap();
    s.set_tunnel_state("tun-vco-b-2", TunnelState::Updating)
        .await
        .unwrap();
    let unsettled = s.unsettled_connections().await.unwrap();
    assert_eq!(ids(unsettled.clone()), ["vco-b", "vco-c"]);
    // Whole connections, tunnels included.
    assert_eq!(unsettled[0].tunnels[1].state, TunnelState::Updating);
    s.set_tunnel_state("tun-vco-b-2", TunnelState::Active)
        .await
        .unwrap();
    assert_eq!(ids(s.unsettled_connections().await.unwrap()), ["vco-c"]);
}

/// `end_observed_state` at start-up: a tunnel that showed SAs or a failure is `idle`
/// with the reason, one that was plain `idle` is left alone, and both survive reopening
/// the file.
#[tokio::test]
async fn end_observed_state_leaves_plain_idle_tunnels_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (idle_since, at) = (now() - chrono::Duration::hours(1), now());
    {
        let s = open(&dir);
        let (gw, cgws) = stored_gateway_and_cgw(&s).await;
        let conn = connection("vco-a", &gw, &cgws, ["cgw-a", "cgw-a"], None);
        s.create_connection(&conn, None).await.unwrap();
        let failed = TunnelStatus {
            phase: TunnelPhase::Phase1Failed,
            reason: Some("no proposal chosen".into()),
            ..Default::default()
        };
        s.set_tunnel_status("tun-vco-a-1", &failed).await.unwrap();
        let idle = TunnelStatus {
            since: Some(idle_since),
            ..Default::default()
        };
        s.set_tunnel_status("tun-vco-a-2", &idle).await.unwrap();
        assert_eq!(s.end_observed_state("restarted", at).await.unwrap(), 1);
    }
    let s = open(&dir);
    let c = s.connection("vco-a").await.unwrap();
    assert_eq!(c.tunnels[0].status.phase, TunnelPhase::Idle);
    assert_eq!(c.tunnels[0].status.reason.as_deref(), Some("restarted"));
    assert_eq!(c.tunnels[0].status.since, Some(at));
    assert_eq!(c.tunnels[1].status.since, Some(idle_since), "untouched");
    assert_eq!(c.tunnels.len(), 2);
}
