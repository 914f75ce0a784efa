//! A rollout's pushes: which push a VM's config of it belongs to (its
//! generation), and what that push changed, said once per proxy.

use super::{record, words, SharedData};

/// How a VM takes part in a push of a rollout (or of a whole config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The push's number. A rollout's guard window and trips belong to one
    /// generation: a push that changes what the rollout decides numbers a
    /// new one (A, B, then A again is three), a push that leaves it alone
    /// or only moves it keeps the number, and with it the window and trips.
    pub generation: u32,
    /// What this push is to the proxy, as the first VM to take it saw it.
    pub news: News,
}

/// What a push of a rollout changed, for the first VM of the proxy to take
/// it (which logs it); the others see [`News::Seen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Another VM of the proxy took this push first.
    Seen,
    /// The proxy never had the rollout.
    New,
    /// What it decides changed: its guard starts afresh.
    Restarted,
    /// Only where it applies changed (hosts, path prefixes, models): its
    /// guard window, trips and schedule go on. (A rollout's place in the
    /// list is not recorded: its records are keyed by its name.)
    Moved,
}

impl Push {
    /// Whether this VM is the first of the proxy to take the push.
    pub fn first(&self) -> bool {
        self.news != News::Seen
    }
}

/// Records at `key` the push of a rollout that decides as `decides` says
/// (its fingerprint) where `scope` says (a digest of its hosts and prefixes),
/// and says how this VM takes part in it. The record is three words: the
/// fingerprint, the generation, the scope digest.
pub fn accept_push(store: &impl SharedData, key: &str, decides: u32, scope: u32) -> Push {
    let mut generation = 0;
    for _ in 0..8 {
        let (seen, cas) = store.get(key);
        let seen = seen.as_deref().and_then(words::<3>);
        let (next, news) = match seen {
            Some([d, g, s]) if d == decides && s == scope => {
                return Push {
                    generation: g,
                    news: News::Seen,
                }
            }
            Some([d, g, _]) if d == decides => ([decides, g, scope], News::Moved),
            Some([_, g, _]) => ([decides, g.wrapping_add(1), scope], News::Restarted),
            None => ([decides, 1, scope], News::New),
        };
        generation = next[1];
        if store.set(key, &record(&next), cas) {
            return Push { generation, news };
        }
        // Another VM moved the record on first: read what it wrote.
    }
    Push {
        generation,
        news: News::Seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn push(generation: u32, news: News) -> Push {
        Push { generation, news }
    }

    #[test]
    fn the_first_vm_numbers_a_push_and_the_others_read_it() {
        let s = MemoryStore::default();
        assert_eq!(accept_push(&s, "p", 0xa, 1), push(1, News::New));
        assert_eq!(accept_push(&s, "p", 0xa, 1), push(1, News::Seen));
        assert_eq!(accept_push(&s, "p", 0xb, 1), push(2, News::Restarted));
        // A revert is a new push.
        assert_eq!(accept_push(&s, "p", 0xa, 1), push(3, News::Restarted));
        // A new scope keeps the generation, once.
        assert_eq!(accept_push(&s, "p", 0xa, 2), push(3, News::Moved));
        assert_eq!(accept_push(&s, "p", 0xa, 2), push(3, News::Seen));
        // Another key (another rollout) counts its own pushes.
        assert_eq!(accept_push(&s, "q", 0xa, 1), push(1, News::New));
    }

    #[test]
    fn a_record_of_another_form_is_no_push_of_this_one() {
        let s = MemoryStore::default();
        s.set("p", b"\x01\x02", None);
        assert_eq!(accept_push(&s, "p", 0xa, 1), push(1, News::New));
    }
}
