//! The behaviour every [`StateStore`] backend must show; backends call [`run`] from a test.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::StateStore;

/// Exercises get/put/remove/scan/scan_from/compare_and_swap semantics; panics on the first deviation.
pub fn run(store: &dyn StateStore) {
    let tree = "conformance";
    assert_eq!(store.get(tree, b"missing").expect("get"), None, "missing key reads as None");

    store.put(tree, b"b", b"2").expect("put");
    store.put(tree, b"a", b"1").expect("put");
    store.put(tree, b"a", b"1bis").expect("overwrite");
    assert_eq!(store.get(tree, b"a").expect("get"), Some(b"1bis".to_vec()), "put overwrites");
    let keys: Vec<Vec<u8>> = store.scan(tree).expect("scan").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()], "scan is ordered by key");
    assert!(store.scan("other-tree").expect("scan").is_empty(), "trees are separate");

    // scan_from: keys >= start, in order, at most limit; big-endian numbers sort numerically.
    let log = "conformance-log";
    for seq in [1u64, 2, 3, 256, 257] {
        store.put(log, &seq.to_be_bytes(), &seq.to_le_bytes()).expect("put");
    }
    let from = |start: u64, limit: usize| -> Vec<u64> {
        let entries = store.scan_from(log, &start.to_be_bytes(), limit).expect("scan_from");
        entries.into_iter().map(|(k, _)| u64::from_be_bytes(k.try_into().expect("8-byte key"))).collect()
    };
    assert_eq!(from(0, 100), vec![1, 2, 3, 256, 257], "from the start: everything in order");
    assert_eq!(from(2, 2), vec![2, 3], "the limit bounds the batch");
    assert_eq!(from(4, 100), vec![256, 257], "starts at the first key at or after start");
    assert!(from(258, 100).is_empty(), "nothing past the last key");
    assert!(from(1, 0).is_empty(), "a zero limit reads nothing");
    assert!(store.scan_from("no-such-tree", b"", 10).expect("scan_from").is_empty());
    let (_, value) = store.scan_from(log, &256u64.to_be_bytes(), 1).expect("scan_from").remove(0);
    assert_eq!(value, 256u64.to_le_bytes().to_vec(), "values come with their keys");

    store.remove(tree, b"a").expect("remove");
    store.remove(tree, b"a").expect("removing a missing key is fine");
    assert_eq!(store.get(tree, b"a").expect("get"), None);

    // compare_and_swap: create-if-absent, swap-if-equal, delete-if-equal, conflict reports current.
    assert!(store.compare_and_swap(tree, b"c", None, Some(b"x")).expect("cas").is_ok());
    let conflict = store.compare_and_swap(tree, b"c", None, Some(b"y")).expect("cas").expect_err("conflict");
    assert_eq!(conflict.current, Some(b"x".to_vec()));
    assert!(store.compare_and_swap(tree, b"c", Some(b"x"), Some(b"y")).expect("cas").is_ok());
    assert!(store.compare_and_swap(tree, b"c", Some(b"y"), None).expect("cas").is_ok());
    assert_eq!(store.get(tree, b"c").expect("get"), None);

    // Racing single-use consumption: exactly one of many concurrent swaps of the same value wins.
    store.put(tree, b"token", b"unused").expect("put");
    let winners = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let outcome = store.compare_and_swap(tree, b"token", Some(b"unused"), Some(b"used")).expect("cas");
                if outcome.is_ok() {
                    winners.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(winners.load(Ordering::SeqCst), 1, "exactly one racer wins a compare_and_swap");
}
