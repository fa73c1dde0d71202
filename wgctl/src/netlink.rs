//! Host networking over rtnetlink: links, addresses, routes, and the address and
//! link events a mobile node uses to notice that its RLOC changed.
//!
//! Every socket is opened in the network namespace of the thread that creates
//! it, so a [`Netlink`] handle keeps acting on the namespace its [`crate::Host`]
//! was opened in, whichever thread later uses it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteMessage, RouteScope},
        RouteNetlinkMessage,
    },
    AddressMessageBuilder, LinkUnspec, LinkWireguard, MulticastGroup, RouteMessageBuilder,
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    error::{errno_of, Error, Result},
    ledger::Registry,
    prefix::IpPrefix,
    route::RouteSpec,
};

/// A change on the host, as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    AddressAdded {
        ifindex: u32,
        /// Empty only if the link vanished before its name could be learnt.
        ifname: String,
        address: IpAddr,
        prefix_len: u8,
        /// False while the kernel checks the address for duplicates (IPv6
        /// DAD: tentative) or after it found one: the kernel will not use it
        /// as a source. A later event for the same address says when it is.
        usable: bool,
    },
    AddressRemoved {
        ifindex: u32,
        ifname: String,
        address: IpAddr,
        prefix_len: u8,
    },
    /// The link became operational (administratively up and running).
    LinkUp { ifindex: u32, ifname: String },
    /// The link stopped being operational, or was deleted.
    LinkDown { ifindex: u32, ifname: String },
}

/// A subscription to [`NetEvent`]s. Dropping it unsubscribes.
pub struct NetEvents {
    rx: mpsc::UnboundedReceiver<NetEvent>,
    task: JoinHandle<()>,
}

impl NetEvents {
    /// The next event; `None` once the netlink socket has failed.
    pub async fn recv(&mut self) -> Option<NetEvent> {
        self.rx.recv().await
    }
}

impl Drop for NetEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Raw rtnetlink operations, with no bookkeeping. [`Netlink`] adds the
/// recording; cleanup uses this directly.
#[derive(Clone)]
pub(crate) struct Rtnl {
    handle: rtnetlink::Handle,
}

impl Rtnl {
    /// Opens a route netlink socket in the calling thread's namespace and
    /// spawns its driver on the current tokio runtime.
    pub(crate) fn connect() -> Result<(Rtnl, JoinHandle<()>)> {
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|e| Error::io("open route netlink socket", e))?;
        let task = tokio::spawn(conn);
        Ok((Rtnl { handle }, task))
    }

    async fn get_link(&self, ifname: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(ifname).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(format!("get link {ifname}"), e)),
        }
    }

    pub(crate) async fn link_index(&self, ifname: &str) -> Result<u32> {
        crate::validate_ifname(ifname)?;
        match self.get_link(ifname).await? {
            Some(link) => Ok(link.header.index),
            None => Err(Error::UnknownInterface(ifname.to_owned())),
        }
    }

    /// The link's MTU.
    pub(crate) async fn link_mtu(&self, ifname: &str) -> Result<u32> {
        crate::validate_ifname(ifname)?;
        let link = self
            .get_link(ifname)
            .await?
            .ok_or_else(|| Error::UnknownInterface(ifname.to_owned()))?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or_else(|| {
                Error::io(
                    format!("read MTU of {ifname}"),
                    std::io::Error::other("no MTU attribute"),
                )
            })
    }

    pub(crate) async fn link_exists(&self, ifname: &str) -> Result<bool> {
        crate::validate_ifname(ifname)?;
        Ok(self.get_link(ifname).await?.is_some())
    }

    pub(crate) async fn set_link(&self, ifname: &str, up: bool) -> Result<()> {
        let index = self.link_index(ifname).await?;
        let builder = LinkUnspec::new_with_index(index);
        let message = if up { builder.up() } else { builder.down() }.build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set link {ifname} up={up}"), e))
    }

    /// Stops the kernel from giving the link an IPv6 link-local address, so
    /// it sends no router solicitations or MLD reports of its own (on the miss
    /// TUN those would look like missed overlay packets).
    pub(crate) async fn disable_ipv6_link_local(&self, ifname: &str) -> Result<()> {
        let index = self.link_index(ifname).await?;
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set addrgenmode none on {ifname}"), e))
    }

    /// Creates a kernel WireGuard link. `EOPNOTSUPP` means the module is
    /// missing, which callers turn into [`Error::KernelModuleMissing`].
    pub(crate) async fn create_wireguard_link(&self, ifname: &str) -> Result<()> {
        crate::validate_ifname(ifname)?;
        let message = LinkWireguard::new(ifname).build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EOPNOTSUPP) => Err(Error::KernelModuleMissing),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                Err(Error::InterfaceExists(ifname.to_owned()))
            }
            Err(e) => Err(Error::netlink(format!("create wireguard link {ifname}"), e)),
        }
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub(crate) async fn delete_link(&self, ifname: &str) -> Result<()> {
        let Some(link) = self.get_link(ifname).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(Error::netlink(format!("delete link {ifname}"), e)),
        }
    }

    /// The addresses on `ifname`, with their prefix lengths.
    pub(crate) async fn addresses(&self, ifname: &str) -> Result<Vec<IpPrefix>> {
        Ok(self
            .address_states(ifname)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The addresses on `ifname`, and whether each is usable as a source
    /// yet (see [`NetEvent::AddressAdded`]).
    pub(crate) async fn address_states(&self, ifname: &str) -> Result<Vec<(IpPrefix, bool)>> {
        let index = self.link_index(ifname).await?;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink(format!("list addresses of {ifname}"), e))?
        {
            if msg.header.index != index {
                continue;
            }
            if let Some(ip) = address_of(&msg) {
                out.push((IpPrefix::new(ip, msg.header.prefix_len)?, usable(&msg)));
            }
        }
        Ok(out)
    }

    /// Adds an address; returns false when it was already there.
    pub(crate) async fn add_address(&self, ifname: &str, address: IpPrefix) -> Result<bool> {
        let index = self.link_index(ifname).await?;
        let request = self
            .handle
            .address()
            .add(index, address.addr(), address.len());
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(Error::netlink(
                format!("add address {address} on {ifname}"),
                e,
            )),
        }
    }

    /// Removes an address; returns false when it was not there.
    pub(crate) async fn del_address(&self, ifname: &str, address: IpPrefix) -> Result<bool> {
        let index = self.link_index(ifname).await?;
        let message: AddressMessage = match address.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, address.len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, address.len())
                .build(),
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(Error::netlink(
                format!("delete address {address} on {ifname}"),
                e,
            )),
        }
    }

    async fn route_message(&self, route: &RouteSpec, for_delete: bool) -> Result<RouteMessage> {
        let index = self.link_index(&route.ifname).await?;
        let dst = route.dst.network();
        let mismatch = || Error::InvalidPrefix(format!("route {dst} with source {:?}", route.src));
        let mut message = match dst.addr() {
            IpAddr::V4(d) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d, dst.len())
                    .output_interface(index)
                    // A route with no gateway is on-link, as `ip route` makes it.
                    .scope(RouteScope::Link);
                match route.src {
                    Some(IpAddr::V4(s)) => b = b.pref_source(s),
                    Some(IpAddr::V6(_)) => return Err(mismatch()),
                    None => {}
                }
                b.build()
            }
            IpAddr::V6(d) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d, dst.len())
                    .output_interface(index);
                match route.src {
                    Some(IpAddr::V6(s)) => b = b.pref_source(s),
                    Some(IpAddr::V4(_)) => return Err(mismatch()),
                    None => {}
                }
                b.build()
            }
        };
        if let Some(metric) = route.metric {
            message
                .attributes
                .push(rtnetlink::packet_route::route::RouteAttribute::Priority(
                    metric,
                ));
        }
        if for_delete {
            // The kernel matches any scope on delete only with RT_SCOPE_NOWHERE.
            message.header.scope = RouteScope::NoWhere;
        }
        Ok(message)
    }

    /// Adds a route; returns false when an identical one was already there.
    pub(crate) async fn add_route(&self, route: &RouteSpec) -> Result<bool> {
        let message = self.route_message(route, false).await?;
        match self.handle.route().add(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(Error::netlink(
                format!("add route {} dev {}", route.dst, route.ifname),
                e,
            )),
        }
    }

    /// Removes a route; returns false when it was not there.
    pub(crate) async fn del_route(&self, route: &RouteSpec) -> Result<bool> {
        let message = self.route_message(route, true).await?;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(Error::netlink(
                format!("delete route {} dev {}", route.dst, route.ifname),
                e,
            )),
        }
    }
}

/// Links, addresses and routes of the host's network namespace. Addresses and
/// routes added here are recorded by the owning [`crate::Host`] and removed when
/// it shuts down; removing them here forgets them.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) rtnl: Rtnl,
    pub(crate) registry: Arc<Registry>,
}

impl Netlink {
    /// The interface index of `ifname`, or [`Error::UnknownInterface`].
    pub async fn link_index(&self, ifname: &str) -> Result<u32> {
        self.rtnl.link_index(ifname).await
    }

    /// The link's MTU.
    pub async fn link_mtu(&self, ifname: &str) -> Result<u32> {
        self.rtnl.link_mtu(ifname).await
    }

    /// Sets the link administratively up.
    pub async fn link_up(&self, ifname: &str) -> Result<()> {
        self.registry.check_open()?;
        self.rtnl.set_link(ifname, true).await?;
        self.registry.note_link_state(ifname, true);
        tracing::debug!(%ifname, "link up");
        Ok(())
    }

    /// Sets the link administratively down.
    pub async fn link_down(&self, ifname: &str) -> Result<()> {
        self.registry.check_open()?;
        self.rtnl.set_link(ifname, false).await?;
        self.registry.note_link_state(ifname, false);
        tracing::debug!(%ifname, "link down");
        Ok(())
    }

    /// Adds `address` (with its prefix length) to `ifname`. An address that is
    /// already there is left alone and not recorded, since wgctl did not add it.
    pub async fn add_address(&self, ifname: &str, address: IpPrefix) -> Result<()> {
        self.registry.check_open()?;
        if self.rtnl.add_address(ifname, address).await? {
            self.registry.record_address(ifname, address);
            tracing::debug!(%ifname, %address, "address added");
        } else {
            tracing::debug!(%ifname, %address, "address already present");
        }
        Ok(())
    }

    /// Removes `address` from `ifname`; an absent address is not an error.
    pub async fn del_address(&self, ifname: &str, address: IpPrefix) -> Result<()> {
        self.registry.check_open()?;
        let removed = self.rtnl.del_address(ifname, address).await?;
        self.registry.forget_address(ifname, address);
        tracing::debug!(%ifname, %address, removed, "address removed");
        Ok(())
    }

    /// Adds a route. An identical route that is already there is left alone
    /// and not recorded.
    pub async fn add_route(&self, route: &RouteSpec) -> Result<()> {
        self.registry.check_open()?;
        if self.rtnl.add_route(route).await? {
            self.registry.record_route(route);
            tracing::debug!(dst = %route.dst, ifname = %route.ifname, metric = %crate::fields::Opt(&route.metric), src = %crate::fields::Opt(&route.src), "route added");
        }
        Ok(())
    }

    /// Removes a route; an absent route is not an error.
    pub async fn del_route(&self, route: &RouteSpec) -> Result<()> {
        self.registry.check_open()?;
        let removed = self.rtnl.del_route(route).await?;
        self.registry.forget_route(route);
        tracing::debug!(dst = %route.dst, ifname = %route.ifname, removed, "route removed");
        Ok(())
    }

    /// The addresses currently on `ifname` (IPv4 and IPv6), e.g. a mobile
    /// node's RLOCs at start-up, before any event arrives.
    pub async fn addresses(&self, ifname: &str) -> Result<Vec<IpPrefix>> {
        self.rtnl.addresses(ifname).await
    }

    /// The addresses on `ifname`, and whether each is usable as a source yet
    /// (not tentative, DAD not failed).
    pub async fn address_states(&self, ifname: &str) -> Result<Vec<(IpPrefix, bool)>> {
        self.rtnl.address_states(ifname).await
    }

    /// Subscribes to address and link events of this namespace. The
    /// subscription starts before this returns, so a change made afterwards is
    /// always reported. Must be called from the tokio runtime, in the namespace
    /// to watch.
    pub async fn events(&self) -> Result<NetEvents> {
        let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(|e| Error::io("open netlink event socket", e))?;
        let conn_task = tokio::spawn(conn);

        let mut links = HashMap::new();
        let mut dump = handle.link().get().execute();
        loop {
            match dump.try_next().await {
                Ok(Some(link)) => {
                    let (index, state) = link_state(&link);
                    links.insert(index, state);
                }
                Ok(None) => break,
                Err(e) => {
                    conn_task.abort();
                    return Err(Error::netlink("dump links for event tracking", e));
                }
            }
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Dropping a JoinHandle only detaches: abort the socket's driver
            // whenever this task ends or is aborted.
            let _conn = AbortOnDrop(conn_task);
            let mut tracker = EventTracker { links, handle };
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some((message, _)) = message else {
                            tracing::warn!("netlink event socket closed");
                            break;
                        };
                        let NetlinkPayload::InnerMessage(inner) = message.payload else {
                            continue;
                        };
                        for event in tracker.translate(inner).await {
                            tracing::debug!(?event, "netlink event");
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(NetEvents { rx, task })
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone)]
struct LinkState {
    name: String,
    operational: bool,
}

fn link_state(link: &LinkMessage) -> (u32, LinkState) {
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let flags = link.header.flags;
    let operational = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running);
    (link.header.index, LinkState { name, operational })
}

/// Turns raw netlink notifications into [`NetEvent`]s, remembering link names
/// (IPv6 address messages carry only an index) and operational state (a
/// `RTM_NEWLINK` is sent for any change, not just up/down).
struct EventTracker {
    links: HashMap<u32, LinkState>,
    handle: rtnetlink::Handle,
}

impl EventTracker {
    async fn translate(&mut self, message: RouteNetlinkMessage) -> Vec<NetEvent> {
        match message {
            RouteNetlinkMessage::NewLink(link) => {
                let (ifindex, state) = link_state(&link);
                let was_up = self.links.get(&ifindex).map(|s| s.operational);
                let ifname = state.name.clone();
                let now_up = state.operational;
                self.links.insert(ifindex, state);
                match (was_up, now_up) {
                    (Some(false) | None, true) => vec![NetEvent::LinkUp { ifindex, ifname }],
                    (Some(true), false) => vec![NetEvent::LinkDown { ifindex, ifname }],
                    _ => vec![],
                }
            }
            RouteNetlinkMessage::DelLink(link) => {
                let (ifindex, state) = link_state(&link);
                match self.links.remove(&ifindex) {
                    Some(old) if old.operational => vec![NetEvent::LinkDown {
                        ifindex,
                        ifname: state.name,
                    }],
                    _ => vec![],
                }
            }
            RouteNetlinkMessage::NewAddress(addr) => {
                let usable = usable(&addr);
                self.address_event(addr)
                    .await
                    .map(
                        |(ifindex, ifname, address, prefix_len)| NetEvent::AddressAdded {
                            ifindex,
                            ifname,
                            address,
                            prefix_len,
                            usable,
                        },
                    )
                    .into_iter()
                    .collect()
            }
            RouteNetlinkMessage::DelAddress(addr) => self
                .address_event(addr)
                .await
                .map(
                    |(ifindex, ifname, address, prefix_len)| NetEvent::AddressRemoved {
                        ifindex,
                        ifname,
                        address,
                        prefix_len,
                    },
                )
                .into_iter()
                .collect(),
            _ => vec![],
        }
    }

    async fn address_event(&mut self, msg: AddressMessage) -> Option<(u32, String, IpAddr, u8)> {
        let ip = address_of(&msg)?;
        let label = msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        });
        let index = msg.header.index;
        let ifname = match self.links.get(&index) {
            Some(state) if !state.name.is_empty() => state.name.clone(),
            _ => match label {
                Some(label) => label,
                None => self.lookup_name(index).await.unwrap_or_default(),
            },
        };
        Some((index, ifname, ip, msg.header.prefix_len))
    }

    async fn lookup_name(&mut self, index: u32) -> Option<String> {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .ok()??;
        let (index, state) = link_state(&link);
        let name = state.name.clone();
        self.links.insert(index, state);
        Some(name)
    }
}

/// Whether the kernel uses the address as a source: not while it is
/// tentative (IPv6 duplicate address detection) or after DAD failed.
fn usable(msg: &AddressMessage) -> bool {
    let header = msg.header.flags;
    let flags = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Flags(f) => Some(*f),
        _ => None,
    });
    let bad_header =
        header.intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed);
    let bad =
        flags.is_some_and(|f| f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed));
    !(bad_header || bad)
}

/// The address an address message is about. IFA_LOCAL is the address itself
/// on point-to-point links, where IFA_ADDRESS is the peer; without a peer they
/// are equal (IPv6 sends only IFA_ADDRESS).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}
