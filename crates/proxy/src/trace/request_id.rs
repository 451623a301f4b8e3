//! Envoy's UUID request id carries the trace decision from hop to hop: the
//! character at index 14 (the UUID's version digit) is `9` when sampled,
//! `a` when a service forced the trace, `b` when the client asked for it,
//! and `4` (a plain v4 UUID) when not traced. Its first eight hex digits
//! are the number the sampling percentages are drawn against.

const POSITION: usize = 14;
const LENGTH: usize = 36;

/// Why a request is traced or not (Envoy's `Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    pub fn traced(self) -> bool {
        !matches!(self, Reason::NotTraceable)
    }
}

/// The reason an id carries; only a 36-character id carries one.
pub fn reason(id: &str) -> Reason {
    if id.len() != LENGTH {
        return Reason::NotTraceable;
    }
    match id.as_bytes()[POSITION] {
        b'a' => Reason::ServiceForced,
        b'9' => Reason::Sampling,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

/// The id with `reason` written into it, or None when the id cannot carry one.
pub fn with_reason(id: &str, reason: Reason) -> Option<String> {
    if id.len() != LENGTH || !id.is_char_boundary(POSITION) || !id.is_char_boundary(POSITION + 1) {
        return None;
    }
    let c = match reason {
        Reason::ServiceForced => "a",
        Reason::ClientForced => "b",
        Reason::Sampling => "9",
        Reason::NotTraceable => "4",
    };
    Some(format!("{}{c}{}", &id[..POSITION], &id[POSITION + 1..]))
}

/// The first eight hex digits as a number (Envoy's `getInteger`).
pub fn integer(id: &str) -> Option<u64> {
    let head = id.get(..8)?;
    u64::from_str_radix(head, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_the_version_digit() {
        let id = "c849b2b2-5788-4ffe-a4e3-6806c52130a8";
        assert_eq!(reason(id), Reason::NotTraceable);
        let sampled = with_reason(id, Reason::Sampling).unwrap();
        assert_eq!(sampled, "c849b2b2-5788-9ffe-a4e3-6806c52130a8");
        assert_eq!(reason(&sampled), Reason::Sampling);
        assert_eq!(reason(&with_reason(id, Reason::ClientForced).unwrap()), Reason::ClientForced);
        assert_eq!(reason(&with_reason(id, Reason::ServiceForced).unwrap()), Reason::ServiceForced);
        assert_eq!(with_reason("short", Reason::Sampling), None);
        assert_eq!(integer(id), Some(0xc849b2b2));
        assert_eq!(integer("zz"), None);
    }
}
