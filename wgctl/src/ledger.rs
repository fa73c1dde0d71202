//! The ledger: what wgctl created on the host, in creation order, so that
//! [`crate::Host`] can remove it all in reverse. Shared by the host and its
//! handles ([`crate::Netlink`], [`crate::WgInterface`]), which record what
//! they add and forget what they remove.

use std::sync::{Arc, Mutex};

use crate::{
    backend::Backend,
    error::{Error, Result},
    prefix::IpPrefix,
    route::RouteSpec,
    userspace::WireguardGo,
};

/// What wgctl created, in creation order, so cleanup can go in reverse.
#[derive(Default)]
pub(crate) struct Records {
    pub(crate) closed: bool,
    pub(crate) interfaces: Vec<InterfaceRecord>,
    pub(crate) addresses: Vec<(String, IpPrefix)>,
    pub(crate) routes: Vec<RouteSpec>,
    /// nftables tables (family inet) created, by name.
    pub(crate) nft_tables: Vec<String>,
}

impl Records {
    pub(crate) fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
            && self.addresses.is_empty()
            && self.routes.is_empty()
            && self.nft_tables.is_empty()
    }
}

pub(crate) struct InterfaceRecord {
    pub(crate) name: String,
    pub(crate) kind: CreatedKind,
    /// Whether wgctl set it up, so a restarted wireguard-go's new TUN is too.
    pub(crate) up: bool,
}

pub(crate) enum CreatedKind {
    WireGuard {
        backend: Backend,
        wireguard_go: Option<Arc<WireguardGo>>,
    },
    Tun,
}

/// Shared between the host and its handles ([`Netlink`], [`WgInterface`]).
#[derive(Default)]
pub(crate) struct Registry {
    records: Mutex<Records>,
}

impl Registry {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.lock().closed {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    pub(crate) fn record_interface(&self, record: InterfaceRecord) -> Result<(), InterfaceRecord> {
        let mut records = self.lock();
        if records.closed {
            return Err(record);
        }
        records.interfaces.push(record);
        Ok(())
    }

    /// Notes an nftables table to delete at shutdown; refused once closed.
    pub(crate) fn record_nft_table(&self, table: String) -> Result<(), String> {
        let mut records = self.lock();
        if records.closed {
            return Err(table);
        }
        records.nft_tables.push(table);
        Ok(())
    }

    /// Forgets an interface, and the addresses and routes that go with it.
    pub(crate) fn take_interface(&self, ifname: &str) -> Option<InterfaceRecord> {
        let mut records = self.lock();
        records.addresses.retain(|(name, _)| name != ifname);
        records.routes.retain(|r| r.ifname != ifname);
        let at = records.interfaces.iter().position(|i| i.name == ifname)?;
        Some(records.interfaces.remove(at))
    }

    pub(crate) fn note_link_state(&self, ifname: &str, up: bool) {
        if let Some(record) = self.lock().interfaces.iter_mut().find(|i| i.name == ifname) {
            record.up = up;
        }
    }

    pub(crate) fn record_address(&self, ifname: &str, address: IpPrefix) {
        let mut records = self.lock();
        if !records
            .addresses
            .iter()
            .any(|(n, a)| n == ifname && *a == address)
        {
            records.addresses.push((ifname.to_owned(), address));
        }
    }

    pub(crate) fn forget_address(&self, ifname: &str, address: IpPrefix) {
        self.lock()
            .addresses
            .retain(|(n, a)| !(n == ifname && *a == address));
    }

    pub(crate) fn record_route(&self, route: &RouteSpec) {
        let mut records = self.lock();
        if !records.routes.contains(route) {
            records.routes.push(route.clone());
        }
    }

    pub(crate) fn forget_route(&self, route: &RouteSpec) {
        self.lock().routes.retain(|r| r != route);
    }

    /// What to put back on `ifname` after its wireguard-go was restarted.
    pub(crate) fn restore_plan(
        &self,
        ifname: &str,
    ) -> Option<(bool, Vec<IpPrefix>, Vec<RouteSpec>)> {
        let records = self.lock();
        let record = records.interfaces.iter().find(|i| i.name == ifname)?;
        let addresses = records
            .addresses
            .iter()
            .filter(|(n, _)| n == ifname)
            .map(|(_, a)| *a)
            .collect();
        let routes = records
            .routes
            .iter()
            .filter(|r| r.ifname == ifname)
            .cloned()
            .collect();
        Some((record.up, addresses, routes))
    }

    pub(crate) fn close_and_take(&self) -> Records {
        let mut records = self.lock();
        records.closed = true;
        Records {
            closed: true,
            interfaces: std::mem::take(&mut records.interfaces),
            addresses: std::mem::take(&mut records.addresses),
            routes: std::mem::take(&mut records.routes),
            nft_tables: std::mem::take(&mut records.nft_tables),
        }
    }
}
