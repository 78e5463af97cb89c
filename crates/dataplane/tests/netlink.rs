//! The rtnetlink client against the kernel, observed with `ip` (needs root).

mod common;

use common::Netns;
use dataplane::{AddMode, Netlink, NetlinkError, RouteSpec, RuleSpec, Tun};

fn kernel_errno(e: &NetlinkError) -> Option<i32> {
    match e {
        NetlinkError::Kernel { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn link_address_and_routes_in_main_and_other_tables() {
    let ns = Netns::new("n");
    let name = ns.name.clone();
    ns.run(move || {
        let ip = |args: &[&str]| {
            let mut v = vec!["ip", "-n", name.as_str()];
            v.extend_from_slice(args);
            common::sh(&v)
        };
        let _tun = Tun::open("nl0", 1).unwrap();
        let idx = Netlink::link_index("nl0").unwrap();
        assert!(matches!(
            Netlink::link_index("nope0"),
            Err(NetlinkError::NoSuchLink(_))
        ));
        let mut nl = Netlink::open().unwrap();

        nl.set_link(idx, Some(true), Some(1380)).unwrap();
        let link = ip(&["link", "show", "nl0"]);
        assert!(link.contains("mtu 1380"), "{link}");
        assert!(link.contains(",UP"), "{link}");

        nl.add_address(idx, "10.9.0.1/24".parse().unwrap(), AddMode::Replace)
            .unwrap();
        // Replace is idempotent; Create is not.
        nl.add_address(idx, "10.9.0.1/24".parse().unwrap(), AddMode::Replace)
            .unwrap();
        let e = nl
            .add_address(idx, "10.9.0.1/24".parse().unwrap(), AddMode::Create)
            .unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::EEXIST), "{e}");
        assert!(ip(&["addr", "show", "nl0"]).contains("inet 10.9.0.1/24"));

        let main = RouteSpec::dev("10.20.0.0/16".parse().unwrap(), idx);
        nl.add_route(&main, AddMode::Create).unwrap();
        let routes = ip(&["route", "show"]);
        assert!(
            routes.contains("10.20.0.0/16 dev nl0 proto 86 scope link"),
            "{routes}"
        );
        let e = nl.add_route(&main, AddMode::Create).unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::EEXIST), "{e}");
        assert!(e.to_string().contains("add route 10.20.0.0/16"), "{e}");
        nl.add_route(&main, AddMode::Replace).unwrap();

        let other = RouteSpec {
            table: 100,
            src: Some("10.9.0.1".parse().unwrap()),
            metric: Some(5),
            ..RouteSpec::dev("10.30.0.0/24".parse().unwrap(), idx)
        };
        nl.add_route(&other, AddMode::Create).unwrap();
        let t100 = ip(&["route", "show", "table", "100"]);
        assert!(
            t100.contains("10.30.0.0/24 dev nl0 proto 86 scope link src 10.9.0.1 metric 5"),
            "{t100}"
        );
        assert!(!ip(&["route", "show"]).contains("10.30.0.0"));
        // A table number above 255 travels in RTA_TABLE.
        let big = RouteSpec {
            table: 1000,
            ..RouteSpec::dev("0.0.0.0/0".parse().unwrap(), idx)
        };
        nl.add_route(&big, AddMode::Create).unwrap();
        let t1000 = ip(&["route", "show", "table", "1000"]);
        assert!(
            t1000.contains("default dev nl0 proto 86 scope link"),
            "{t1000}"
        );

        nl.del_route(&main).unwrap();
        nl.del_route(&other).unwrap();
        nl.del_route(&big).unwrap();
        assert!(!ip(&["route", "show"]).contains("10.20.0.0"));
        assert!(!ip(&["route", "show", "table", "100"]).contains("10.30.0.0"));
        assert!(!ip(&["route", "show", "table", "1000"]).contains("default"));
        let e = nl.del_route(&main).unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::ESRCH), "{e}");

        // A device that does not exist: the kernel says so.
        let e = nl
            .add_route(
                &RouteSpec::dev("10.40.0.0/16".parse().unwrap(), 999_999),
                AddMode::Create,
            )
            .unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::ENODEV), "{e}");

        nl.del_address(idx, "10.9.0.1/24".parse().unwrap()).unwrap();
        assert!(!ip(&["addr", "show", "nl0"]).contains("10.9.0.1"));
    });
}

#[test]
fn policy_rules_add_and_delete() {
    let ns = Netns::new("r");
    let name = ns.name.clone();
    ns.run(move || {
        let rules = || common::sh(&["ip", "-n", name.as_str(), "rule", "show"]);
        let mut nl = Netlink::open().unwrap();
        let r = RuleSpec {
            src: Some("10.1.0.0/24".parse().unwrap()),
            dst: Some("10.2.0.0/24".parse().unwrap()),
            table: 100,
            priority: Some(1000),
        };
        nl.add_rule(&r).unwrap();
        let shown = rules();
        assert!(
            shown.contains("1000:\tfrom 10.1.0.0/24 to 10.2.0.0/24 lookup 100"),
            "{shown}"
        );
        let e = nl.add_rule(&r).unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::EEXIST), "{e}");

        let from_only = RuleSpec {
            src: Some("10.1.0.0/24".parse().unwrap()),
            dst: None,
            table: 2000,
            priority: Some(1001),
        };
        nl.add_rule(&from_only).unwrap();
        assert!(
            rules().contains("1001:\tfrom 10.1.0.0/24 lookup 2000"),
            "{}",
            rules()
        );

        nl.del_rule(&r).unwrap();
        nl.del_rule(&from_only).unwrap();
        let shown = rules();
        assert!(
            !shown.contains("lookup 100\n") && !shown.contains("lookup 2000"),
            "{shown}"
        );
        let e = nl.del_rule(&r).unwrap_err();
        assert_eq!(kernel_errno(&e), Some(libc::ENOENT), "{e}");
    });
}
