//! Resource ids: a kind prefix and a random part, as users know them (`acc-…`, `ws-…`).

use rand::RngExt;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 16;

/// The kinds of resource that have ids, each with the prefix its ids start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Account,
    Workspace,
    Task,
    Worker,
    Source,
    Attachment,
    Schedule,
    Trigger,
    Webhook,
    Delivery,
    Agent,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Account => "acc",
            IdKind::Workspace => "ws",
            IdKind::Task => "task",
            IdKind::Worker => "wrk",
            IdKind::Source => "src",
            IdKind::Attachment => "att",
            IdKind::Schedule => "sch",
            IdKind::Trigger => "trg",
            IdKind::Webhook => "whk",
            IdKind::Delivery => "dlv",
            IdKind::Agent => "agt",
        }
    }
}

/// A new random id of `kind`; 16 base-36 characters give about 82 bits of randomness.
pub fn new_id(kind: IdKind) -> String {
    let mut rng = rand::rng();
    let random: String = (0..RANDOM_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{}-{random}", kind.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let a = new_id(IdKind::Task);
        let b = new_id(IdKind::Task);
        assert!(a.starts_with("task-"));
        assert_eq!(a.len(), "task-".len() + RANDOM_LEN);
        assert_ne!(a, b);
        assert!(new_id(IdKind::Worker).starts_with("wrk-"));
    }
}
