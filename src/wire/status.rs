//! Status records: the zygote's reports about one worker, on that worker's
//! status pipe. Each record is a little-endian `u32` kind and `i32` value:
//! first the worker's pid; once the zygote reaped it, its peak resident
//! memory (`wait4`'s `ru_maxrss`, in KiB, saturated at `i32::MAX`: 2 TiB)
//! and then its raw wait status, so the peak is known when the exit is.

pub const RECORD_LEN: usize = 8;

wire_codes! {
    /// `Pid`: the value is the worker's pid. `Exit`: the value is its raw
    /// wait status. `MaxRss`: its peak resident memory in KiB.
    pub enum StatusKind: u32 { Pid = 1, Exit = 2, MaxRss = 3 }
}

pub fn encode(kind: StatusKind, value: i32) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    record[..4].copy_from_slice(&(kind as u32).to_le_bytes());
    record[4..].copy_from_slice(&value.to_le_bytes());
    record
}

/// Collects the bytes of a status pipe, which may arrive in any chunks, and
/// yields whole records.
#[derive(Default)]
pub struct StatusDecoder {
    pending: Vec<u8>,
}

impl StatusDecoder {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole record. A kind we do not know is skipped: a newer
    /// zygote's extra report must not break an older pool.
    pub fn next_record(&mut self) -> Option<(StatusKind, i32)> {
        while self.pending.len() >= RECORD_LEN {
            let mut record = [0u8; RECORD_LEN];
            record.copy_from_slice(&self.pending[..RECORD_LEN]);
            self.pending.drain(..RECORD_LEN);
            let [k0, k1, k2, k3, v0, v1, v2, v3] = record;
            let value = i32::from_le_bytes([v0, v1, v2, v3]);
            if let Some(kind) = StatusKind::from_value(u32::from_le_bytes([k0, k1, k2, k3])) {
                return Some((kind, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_any_split() {
        let mut bytes = encode(StatusKind::Pid, 4242).to_vec();
        bytes.extend(encode(StatusKind::MaxRss, 51_200));
        bytes.extend(encode(StatusKind::Exit, -9));
        for split in 0..bytes.len() {
            let mut decoder = StatusDecoder::default();
            decoder.feed(&bytes[..split]);
            let mut seen = Vec::new();
            while let Some(record) = decoder.next_record() {
                seen.push(record);
            }
            decoder.feed(&bytes[split..]);
            while let Some(record) = decoder.next_record() {
                seen.push(record);
            }
            let expected = vec![
                (StatusKind::Pid, 4242),
                (StatusKind::MaxRss, 51_200),
                (StatusKind::Exit, -9),
            ];
            assert_eq!(seen, expected);
        }
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut decoder = StatusDecoder::default();
        decoder.feed(&[99, 0, 0, 0, 1, 0, 0, 0]);
        decoder.feed(&encode(StatusKind::Exit, 0));
        assert_eq!(decoder.next_record(), Some((StatusKind::Exit, 0)));
        assert_eq!(decoder.next_record(), None);
    }
}
