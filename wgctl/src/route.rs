//! Route specifications: plain data shared by [`crate::Netlink`] and the
//! ledger.

use std::net::IpAddr;

use crate::prefix::IpPrefix;

/// A route to add or remove: `dst` via the interface `ifname`, optionally with
/// a metric (lower wins among equal prefixes) and a preferred source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    pub dst: IpPrefix,
    pub ifname: String,
    pub metric: Option<u32>,
    pub src: Option<IpAddr>,
}

impl RouteSpec {
    /// A plain device route with no metric or source.
    pub fn via_interface(dst: IpPrefix, ifname: impl Into<String>) -> Self {
        RouteSpec {
            dst,
            ifname: ifname.into(),
            metric: None,
            src: None,
        }
    }

    pub fn with_metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn with_src(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }
}
