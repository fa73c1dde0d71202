//! proptest strategies producing every message kind, valid by construction.
#![allow(dead_code)]

pub mod agree;

use lisp_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

/// A Distinguished Name: 1 to 255 printable ASCII bytes.
pub fn dist_name() -> impl Strategy<Value = Address> {
    "[ -~]{1,255}".prop_map(Address::DistinguishedName)
}

pub fn plain() -> impl Strategy<Value = Address> {
    prop_oneof![
        Just(Address::None),
        ip().prop_map(Address::from),
        dist_name()
    ]
}

/// Addresses with LCAF nesting up to three levels, every LCAF type.
pub fn address() -> impl Strategy<Value = Address> {
    plain().prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            (any::<u32>(), any::<u8>(), inner.clone()).prop_map(|(iid, m, a)| {
                Address::InstanceId {
                    iid,
                    iid_mask_len: m,
                    address: Box::new(a),
                }
            }),
            (
                any::<bool>(),
                vec(vec(any::<u8>(), 0..40), 1..3),
                inner.clone()
            )
                .prop_map(|(revoke, keys, a)| Address::SecurityKey(SecurityKey {
                    algorithm: 1,
                    revoke,
                    keys,
                    address: Box::new(a)
                })),
            (any::<[u8; 32]>(), inner.clone()).prop_map(|(k, a)| {
                Address::SecurityKey(SecurityKey {
                    algorithm: 6,
                    revoke: false,
                    keys: vec![k.to_vec()],
                    address: Box::new(a),
                })
            }),
            (
                any::<u16>(),
                any::<u16>(),
                inner.clone(),
                inner.clone(),
                inner.clone(),
                vec(inner.clone(), 0..2)
            )
                .prop_map(|(ms_port, etr_port, g, m, p, rtr_rlocs)| {
                    Address::NatTraversal(NatTraversal {
                        ms_port,
                        etr_port,
                        global_etr_rloc: Box::new(g),
                        ms_rloc: Box::new(m),
                        private_etr_rloc: Box::new(p),
                        rtr_rlocs,
                    })
                }),
            vec(inner, 0..4).prop_map(Address::AfiList),
        ]
    })
}

/// An EID field and a mask length valid for it.
pub fn eid() -> impl Strategy<Value = (Address, u8)> {
    (ip(), any::<u32>(), 0u8..5, any::<u8>(), any::<[u8; 32]>()).prop_map(
        |(ip, iid, form, m, key)| {
            if form >= 3 {
                // A node name, plain or in an instance: its mask length is
                // at most its length in bits.
                let name = format!("robot-{iid:x}.lispwg.internal");
                let max = (name.len() * 8).min(255);
                let mask = (m as usize % (max + 1)) as u8;
                let dn = Address::DistinguishedName(name);
                let a = if form == 3 {
                    dn
                } else {
                    Address::InstanceId {
                        iid,
                        iid_mask_len: 0,
                        address: Box::new(dn),
                    }
                };
                return (a, mask);
            }
            let max = if ip.is_ipv4() { 33 } else { 129 };
            let mask = m % max;
            let base = Address::from(ip);
            let a = match form {
                0 => base,
                1 => Address::InstanceId {
                    iid,
                    iid_mask_len: 0,
                    address: Box::new(base),
                },
                _ => Address::InstanceId {
                    iid,
                    iid_mask_len: 0,
                    address: Box::new(Address::SecurityKey(SecurityKey {
                        algorithm: 6,
                        revoke: false,
                        keys: vec![key.to_vec()],
                        address: Box::new(base),
                    })),
                },
            };
            (a, mask)
        },
    )
}

/// A WireGuard candidate: direct, behind a NAT, relayed or not.
pub fn wg_locator() -> impl Strategy<Value = WgLocator> {
    (
        ip(),
        any::<u16>(),
        any::<[u8; 32]>(),
        proptest::option::of(ip()),
        vec(ip(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(addr, port, key, private, mut rtrs, relayed)| {
            if relayed {
                rtrs.push(addr);
            }
            WgLocator {
                endpoint: std::net::SocketAddr::new(addr, port),
                key,
                private,
                rtrs,
            }
        })
}

/// Any locator: an arbitrary address, or a WireGuard candidate as lispwg
/// builds it.
pub fn locator() -> impl Strategy<Value = Address> {
    prop_oneof![address(), wg_locator().prop_map(|w| w.to_address())]
}

pub fn rloc_record() -> impl Strategy<Value = RlocRecord> {
    (any::<[u8; 4]>(), any::<[bool; 3]>(), locator()).prop_map(|(p, f, locator)| RlocRecord {
        priority: p[0],
        weight: p[1],
        m_priority: p[2],
        m_weight: p[3],
        local: f[0],
        probed: f[1],
        reachable: f[2],
        locator,
    })
}

pub fn eid_record() -> impl Strategy<Value = EidRecord> {
    (
        any::<u32>(),
        eid(),
        0u8..8,
        any::<bool>(),
        0u16..4096,
        vec(rloc_record(), 0..4),
    )
        .prop_map(
            |(ttl, (eid, eid_mask_len), act, authoritative, map_version, rlocs)| EidRecord {
                ttl,
                eid_mask_len,
                action: Action::from_bits(act),
                authoritative,
                map_version,
                eid,
                rlocs,
            },
        )
}

pub fn auth() -> impl Strategy<Value = Authentication> {
    prop_oneof![
        Just(Authentication::unsigned(KeyId::None)),
        any::<[u8; 20]>().prop_map(|d| Authentication {
            key_id: KeyId::HmacSha1,
            data: d.to_vec()
        }),
        any::<[u8; 32]>().prop_map(|d| Authentication {
            key_id: KeyId::HmacSha256,
            data: d.to_vec()
        }),
    ]
}

pub fn xtr_site() -> impl Strategy<Value = Option<XtrSiteId>> {
    proptest::option::of(
        (any::<[u8; 16]>(), any::<u64>())
            .prop_map(|(xtr_id, site_id)| XtrSiteId { xtr_id, site_id }),
    )
}

pub fn map_request() -> impl Strategy<Value = MapRequest> {
    (
        any::<[bool; 7]>(),
        any::<u64>(),
        prop_oneof![Just(Address::None), eid().prop_map(|e| e.0)],
        vec(ip().prop_map(Address::from), 1..4),
        vec(
            eid().prop_map(|(eid, eid_mask_len)| RequestRecord { eid_mask_len, eid }),
            0..3,
        ),
        proptest::option::of(eid_record()),
    )
        .prop_map(
            |(f, nonce, source_eid, itr_rlocs, records, map_reply_record)| MapRequest {
                authoritative: f[0],
                probe: f[1],
                smr: f[2],
                pitr: f[3],
                smr_invoked: f[4],
                local_xtr: f[5],
                dont_map_reply: f[6],
                nonce,
                source_eid,
                itr_rlocs,
                records,
                map_reply_record,
            },
        )
}

pub fn map_notify() -> impl Strategy<Value = MapNotify> {
    (
        any::<bool>(),
        any::<u64>(),
        auth(),
        vec(eid_record(), 0..3),
        xtr_site(),
    )
        .prop_map(|(_, nonce, auth, records, xtr_site)| MapNotify {
            nonce,
            auth,
            records,
            xtr_site,
        })
}

/// Any message but an ECM.
pub fn inner_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        map_request().prop_map(Message::MapRequest),
        (any::<[bool; 3]>(), any::<u64>(), vec(eid_record(), 0..3)).prop_map(
            |(f, nonce, records)| {
                Message::MapReply(MapReply {
                    probe: f[0],
                    echo_nonce: f[1],
                    security: f[2],
                    nonce,
                    records,
                })
            }
        ),
        (
            any::<[bool; 4]>(),
            any::<u64>(),
            auth(),
            vec(eid_record(), 0..3),
            xtr_site()
        )
            .prop_map(|(f, nonce, auth, records, xtr_site)| Message::MapRegister(
                MapRegister {
                    proxy_reply: f[0],
                    security: f[1],
                    rtr: f[2],
                    want_map_notify: f[3],
                    nonce,
                    auth,
                    records,
                    xtr_site,
                }
            )),
        map_notify().prop_map(Message::MapNotify),
        map_notify().prop_map(Message::MapNotifyAck),
    ]
}

pub fn inner_header() -> impl Strategy<Value = InnerHeader> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
    ]
    .prop_flat_map(|(src, dst)| {
        (any::<u8>(), any::<u16>(), any::<u16>()).prop_map(move |(ttl, src_port, dst_port)| {
            InnerHeader {
                src,
                dst,
                ttl,
                src_port,
                dst_port,
            }
        })
    })
}

pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        3 => inner_message(),
        1 => (any::<[bool; 4]>(), inner_header(), inner_message()).prop_map(|(f, inner, m)| {
            Message::Ecm(Ecm { security: f[0], ddt: f[1], to_etr: f[2], to_ms: f[3], inner, message: Box::new(m) })
        }),
    ]
}

/// A Map-Request, plain or in an ECM: what the map-server's view reads.
pub fn request_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        map_request().prop_map(Message::MapRequest),
        (any::<[bool; 4]>(), inner_header(), map_request()).prop_map(|(f, inner, r)| {
            Message::Ecm(Ecm {
                security: f[0],
                ddt: f[1],
                to_etr: f[2],
                to_ms: f[3],
                inner,
                message: Box::new(Message::MapRequest(r)),
            })
        }),
    ]
}
