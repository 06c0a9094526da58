//! Which VM sends for the whole Envoy. Every worker has its own VM, and each used to send its
//! own bulk calls; two calls carrying one new visitor's hits at the same moment make Matomo
//! create two visits. So one VM, the leader, drains the shared queue every worker fills and
//! sends everything. Leadership is a record in Proxy-Wasm shared data, taken with
//! compare-and-swap and kept by a heartbeat every tick; when the leader stops beating (its VM
//! crashed or was replaced), the next VM to tick takes over and drains what is queued. Pure: the
//! glue reads and writes the record.

use std::time::Duration;

/// A leader that has not beaten for this long is gone.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Who leads, and when they last said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The leading VM's id; 0: nobody.
    pub holder: u64,
    pub heartbeat: Duration,
}

impl Record {
    pub const VACANT: Record = Record {
        holder: 0,
        heartbeat: Duration::ZERO,
    };

    pub fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let millis = u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX);
        for (slot, byte) in out.iter_mut().zip(
            self.holder
                .to_le_bytes()
                .into_iter()
                .chain(millis.to_le_bytes()),
        ) {
            *slot = byte;
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let holder = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let millis = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Record {
            holder,
            heartbeat: Duration::from_millis(millis),
        })
    }
}

/// What a VM does on its tick, given the record it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It leads (or may take the lead): write `Record { me, now }` with the record's CAS.
    Lead,
    /// Someone else leads.
    Follow,
}

pub fn decide(current: Record, me: u64, now: Duration) -> Step {
    let stale = now.saturating_sub(current.heartbeat) >= TIMEOUT;
    if current.holder == me || current.holder == 0 || stale {
        Step::Lead
    } else {
        Step::Follow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            holder: 0xdead_beef_0000_0001,
            heartbeat: Duration::from_millis(1_700_000_000_123),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn a_vacant_or_stale_lead_is_taken_and_a_live_one_followed() {
        let s = Duration::from_secs;
        let other = |at| Record {
            holder: 7,
            heartbeat: s(at),
        };
        assert_eq!(decide(Record::VACANT, 1, s(100)), Step::Lead);
        assert_eq!(decide(other(99), 1, s(100)), Step::Follow);
        assert_eq!(
            decide(other(98), 1, s(100)),
            Step::Lead,
            "2 s without a beat"
        );
        assert_eq!(decide(other(99), 7, s(100)), Step::Lead, "its own record");
    }
}
