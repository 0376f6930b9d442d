//! Connections that have not logged in yet: capped apart from
//! `max_connections`, in all and per source address, so that sockets that
//! never send a CONNECT cannot lock devices out.
//!
//! A connection takes a `max_connections` slot only once its CONNECT is
//! valid and its login accepted; until then (the TLS handshake and the
//! CONNECT, [`super::serve::CONNECT_TIMEOUT`] at most) it holds one of
//! [`PRE_LOGIN`] places, and at most [`PER_ADDRESS`] of them come from one
//! address. A socket past either is closed as soon as it is accepted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections not logged in yet, at most.
pub const PRE_LOGIN: usize = 64;

/// Connections not logged in yet from one address, at most.
pub const PER_ADDRESS: usize = 16;

/// The connections not logged in yet, by address.
#[derive(Debug, Default)]
pub struct PreLogin {
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// A place among the connections not logged in yet; given back on drop.
#[derive(Debug)]
pub struct Waiting {
    of: Arc<PreLogin>,
    ip: IpAddr,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    All,
    Address,
}

impl PreLogin {
    /// A place for a connection from `ip`, if there is one.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Waiting, Full> {
        let mut by = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = by.values().sum();
        if total >= PRE_LOGIN {
            return Err(Full::All);
        }
        let n = by.entry(ip).or_insert(0);
        if *n >= PER_ADDRESS {
            return Err(Full::Address);
        }
        *n += 1;
        Ok(Waiting {
            of: self.clone(),
            ip,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut by = self.of.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_in_all_and_per_address() {
        let p = Arc::new(PreLogin::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<Waiting> = (0..PER_ADDRESS).map(|_| p.enter(a).unwrap()).collect();
        assert_eq!(p.enter(a).unwrap_err(), Full::Address);
        for i in 0..(PRE_LOGIN - PER_ADDRESS) {
            let ip = IpAddr::from([10, 0, 1, (i % 250) as u8]);
            held.push(p.enter(ip).unwrap());
        }
        assert_eq!(p.enter("10.9.9.9".parse().unwrap()).unwrap_err(), Full::All);
        held.swap_remove(0);
        assert!(p.enter(a).is_ok(), "a place given back is free again");
        held.clear();
        assert!(p.by_address.lock().unwrap().is_empty());
    }
}
