//! Authenticated connections open at once, per device and per account, in
//! this gateway: a phone needs one (two while it moves between networks),
//! a user a few phones. Beyond the cap the *oldest* connection of that
//! device or account is closed, not the new one: a phone whose network
//! changed reconnects before its old connection's idle timeout (60 s)
//! ends, and must not be locked out by its own dead connection; a stolen
//! credential that opens connection after connection only replaces its own
//! (each one costing it a full QUIC, TLS and Noise handshake), and the
//! owner's phone comes back the same way.
//!
//! A plain type over what it holds (`T`: the QUIC connection in the
//! server, anything in tests): [`Caps::open`] says which to close.
//!
//! Must never: let one device's or account's connections grow past its
//! cap, or keep an entry after [`Caps::close`] (no growth without bound).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionCaps {
    /// Authenticated connections of one device (its Noise key). Default 4.
    pub per_device: usize,
    /// Authenticated connections of one account, all its devices. Default
    /// 16.
    pub per_account: usize,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        Self {
            per_device: 4,
            per_account: 16,
        }
    }
}

impl ConnectionCaps {
    /// No cap (load generators, whose phones share accounts).
    pub fn unlimited() -> Self {
        Self {
            per_device: usize::MAX,
            per_account: usize::MAX,
        }
    }
}

/// Which cap closed a connection: the device's or the account's (the
/// budgets' scopes, with their metric labels).
pub use crate::budget::Scope;

/// The open connections, oldest first, per device and per account.
#[derive(Debug)]
pub struct Caps<T> {
    caps: ConnectionCaps,
    next: u64,
    devices: HashMap<[u8; 32], VecDeque<(u64, T)>>,
    /// Each entry names its device, so an account's eviction edits that
    /// device's list only.
    accounts: HashMap<String, VecDeque<(u64, [u8; 32], T)>>,
}

/// An open connection's place in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    id: u64,
    device: [u8; 32],
    account: String,
}

impl<T: Clone> Caps<T> {
    /// An empty table.
    pub fn new(caps: ConnectionCaps) -> Self {
        Self {
            caps,
            next: 0,
            devices: HashMap::new(),
            accounts: HashMap::new(),
        }
    }

    /// A connection of `device` and `account` opened: its ticket, and the
    /// older connections to close now (each with the cap it exceeded).
    pub fn open(&mut self, device: [u8; 32], account: &str, conn: T) -> (Ticket, Vec<(T, Scope)>) {
        self.next += 1;
        let id = self.next;
        let mut close = Vec::new();
        let d = self.devices.entry(device).or_default();
        d.push_back((id, conn.clone()));
        while d.len() > self.caps.per_device.max(1) {
            if let Some((old, c)) = d.pop_front() {
                close.push((old, c, Scope::Device));
            }
        }
        let a = self.accounts.entry(account.to_owned()).or_default();
        a.push_back((id, device, conn));
        // One closed for its device's cap leaves the account's list too.
        a.retain(|(i, _, _)| !close.iter().any(|(old, _, _)| old == i));
        let mut evicted = Vec::new();
        while a.len() > self.caps.per_account.max(1) {
            if let Some((old, dev, c)) = a.pop_front() {
                evicted.push((old, dev));
                close.push((old, c, Scope::Account));
            }
        }
        for (old, dev) in evicted {
            self.remove_device_entry(dev, old);
        }
        let ticket = Ticket {
            id,
            device,
            account: account.to_owned(),
        };
        (ticket, close.into_iter().map(|(_, c, s)| (c, s)).collect())
    }

    fn remove_device_entry(&mut self, device: [u8; 32], id: u64) {
        if let Some(d) = self.devices.get_mut(&device) {
            d.retain(|(i, _)| *i != id);
            if d.is_empty() {
                self.devices.remove(&device);
            }
        }
    }

    /// The connection of `ticket` ended.
    pub fn close(&mut self, ticket: &Ticket) {
        self.remove_device_entry(ticket.device, ticket.id);
        if let Some(a) = self.accounts.get_mut(&ticket.account) {
            a.retain(|(i, _, _)| *i != ticket.id);
            if a.is_empty() {
                self.accounts.remove(&ticket.account);
            }
        }
    }

    /// Connections held (every device's together).
    pub fn len(&self) -> usize {
        self.devices.values().map(VecDeque::len).sum()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_connection_of_a_device_gives_way() {
        let mut t = Caps::new(ConnectionCaps {
            per_device: 2,
            per_account: 10,
        });
        let (a, none) = t.open([1; 32], "acct", "a");
        assert!(none.is_empty());
        let (_b, none) = t.open([1; 32], "acct", "b");
        assert!(none.is_empty());
        let (_c, closed) = t.open([1; 32], "acct", "c");
        assert_eq!(closed, vec![("a", Scope::Device)]);
        assert_eq!(t.len(), 2);
        // The closed one's own end changes nothing more.
        t.close(&a);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_account_is_capped_over_all_its_devices_and_entries_go_when_closed() {
        let mut t = Caps::new(ConnectionCaps {
            per_device: 2,
            per_account: 3,
        });
        let mut tickets = Vec::new();
        for d in 1..=3u8 {
            let (k, closed) = t.open([d; 32], "acct", d);
            assert!(closed.is_empty());
            tickets.push(k);
        }
        let (k4, closed) = t.open([4; 32], "acct", 4);
        assert_eq!(closed, vec![(1, Scope::Account)]);
        tickets.push(k4);
        // Another account is not touched.
        let (other, closed) = t.open([9; 32], "other", 9);
        assert!(closed.is_empty());
        for k in tickets.iter().chain([&other]) {
            t.close(k);
        }
        assert!(t.is_empty());
        assert!(t.accounts.is_empty());
    }
}
