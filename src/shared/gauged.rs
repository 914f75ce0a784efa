//! The names whose gauges were set, so that a push that drops a version or a
//! rollout zeroes what it dropped.

use super::SharedData;

/// Envoy keeps a gauge at its last value until the process ends, so a push
/// that drops a version (or a whole rollout) would leave its gauges showing
/// the old values (and alerts firing). A record in shared data keeps the
/// names whose gauges were set (space separated; names hold no spaces):
/// given that record and the names of the config being installed, returns
/// the names to zero and the new record (the config's names first, then
/// the older ones, at most `keep`). Dropped names stay in the record, so a
/// VM that set a gauge after another zeroed it is corrected on the next push.
pub fn gauged_names<'a>(record: &'a [u8], names: &[&str], keep: usize) -> (Vec<&'a str>, Vec<u8>) {
    let dropped: Vec<&str> = std::str::from_utf8(record)
        .unwrap_or("")
        .split(' ')
        .filter(|name| !name.is_empty() && !names.contains(name))
        .collect();
    let kept: Vec<&str> = names
        .iter()
        .copied()
        .chain(dropped.iter().copied())
        .take(keep)
        .collect();
    (dropped, kept.join(" ").into_bytes())
}

/// Updates the record of gauged names at `key` ([`gauged_names`]) with
/// compare-and-swap, and returns the dropped names, to zero.
pub fn update_gauged(
    store: &impl SharedData,
    key: &str,
    names: &[&str],
    keep: usize,
) -> Vec<String> {
    for _ in 0..4 {
        let (record, cas) = store.get(key);
        let record = record.unwrap_or_default();
        let (dropped, next) = gauged_names(&record, names, keep);
        let dropped = dropped.into_iter().map(String::from).collect();
        // On a lost race the other VM's record holds the same names.
        if next == record || store.set(key, &next, cas) {
            return dropped;
        }
    }
    Vec::new()
}

/// The names of the record at `key` ([`gauged_names`]) that `current` does
/// not hold: gauges of what a push dropped, to zero. The record is left as
/// it is (dropped names stay, so each later push zeroes them again, should
/// a VM still on an older config have set one since).
pub fn dropped(store: &impl SharedData, key: &str, current: &[&str]) -> Vec<String> {
    let record = store.get(key).0.unwrap_or_default();
    std::str::from_utf8(&record)
        .unwrap_or("")
        .split(' ')
        .filter(|name| !name.is_empty() && !current.contains(name))
        .map(String::from)
        .collect()
}

/// The names of the record at `key`, read once: a push asks it for every
/// rollout of the config.
pub struct Names(std::collections::HashSet<String>);

impl Names {
    pub fn read(store: &impl SharedData, key: &str) -> Names {
        let record = store.get(key).0.unwrap_or_default();
        Names(
            std::str::from_utf8(&record)
                .unwrap_or("")
                .split(' ')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    pub fn holds(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Adds `name` to the record at `key` (first, the record kept to `keep`
/// names), with compare-and-swap.
pub fn add(store: &impl SharedData, key: &str, name: &str, keep: usize) {
    for _ in 0..4 {
        let (record, cas) = store.get(key);
        let record = record.unwrap_or_default();
        let text = std::str::from_utf8(&record).unwrap_or("");
        if text.split(' ').any(|n| n == name) {
            return;
        }
        let names: Vec<&str> = std::iter::once(name)
            .chain(text.split(' ').filter(|n| !n.is_empty()))
            .take(keep)
            .collect();
        if store.set(key, names.join(" ").as_bytes(), cas) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    #[test]
    fn a_served_name_is_added_once_and_a_dropped_one_stays_listed() {
        let s = MemoryStore::default();
        add(&s, "g", "iris", 4);
        add(&s, "g", "flowers", 4);
        add(&s, "g", "iris", 4);
        let names = Names::read(&s, "g");
        assert!(names.holds("iris") && !names.holds("tulips"));
        assert_eq!(dropped(&s, "g", &["iris"]), ["flowers"]);
        assert_eq!(dropped(&s, "g", &["iris"]), ["flowers"], "still listed");
        for name in ["a", "b", "c", "d"] {
            add(&s, "g", name, 4);
        }
        assert_eq!(dropped(&s, "g", &[]), ["d", "c", "b", "a"]);
    }
}
