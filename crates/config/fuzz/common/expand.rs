//! Structure-aware fuzz input: fuzz bytes expanded into grammar tokens repeated many times, so
//! a few bytes reach deep nesting and long repetitions that raw bytes rarely do. A copy of
//! crates/index/fuzz/common/expand.rs (each fuzz crate is its own workspace).

/// Expands `data` two bytes at a time: the first picks a token of `tokens`, the second how often
/// it repeats (1-4 times below 128, else a power of two up to 4096). Stops at `max_len` bytes.
pub fn expand(data: &[u8], tokens: &[&str], max_len: usize) -> String {
    let mut out = String::new();
    for pair in data.chunks(2) {
        let token = tokens[usize::from(pair[0]) % tokens.len()];
        let count = pair.get(1).map_or(1, |&byte| repeat_count(byte));
        for _ in 0..count {
            if out.len() + token.len() > max_len {
                return out;
            }
            out.push_str(token);
        }
    }
    out
}

fn repeat_count(byte: u8) -> usize {
    if byte < 128 { 1 + usize::from(byte % 4) } else { 1 << ((byte - 128) % 13) }
}
