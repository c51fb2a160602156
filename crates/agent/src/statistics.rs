//! BM25 statistics between the wire and the index: what `NodeTermStatistics` answers and what
//! `NodeSearch` scores with in a global-BM25 search (see `ragmesh_index::TermStatistics`).

use ragmesh_index::TermStatistics;
use ragmesh_proto::v1;

/// The wire form of `stats`.
pub fn to_wire(stats: &TermStatistics) -> v1::TermStatistics {
    v1::TermStatistics {
        total_docs: stats.total_docs(),
        fields: stats
            .fields()
            .map(|(field, total_tokens)| v1::FieldTokens { field: field.to_owned(), total_tokens })
            .collect(),
        terms: stats
            .doc_freqs()
            .map(|(field, term, doc_freq)| v1::TermFrequency {
                field: field.to_owned(),
                term: term.to_owned(),
                doc_freq,
            })
            .collect(),
    }
}

/// The statistics a caller sent (the index refuses ones that lack a term or are inconsistent).
pub fn from_wire(wire: &v1::TermStatistics) -> TermStatistics {
    let mut stats = TermStatistics::new(wire.total_docs);
    for field in &wire.fields {
        stats.set_total_tokens(field.field.clone(), field.total_tokens);
    }
    for term in &wire.terms {
        stats.set_doc_freq(term.field.clone(), term.term.clone(), term.doc_freq);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_the_wire() {
        let mut stats = TermStatistics::new(42);
        stats.set_total_tokens("body", 900);
        stats.set_total_tokens("title", 80);
        stats.set_doc_freq("body", "mesh", 7);
        stats.set_doc_freq("title", "mesh", 2);
        let back = from_wire(&to_wire(&stats));
        assert_eq!(back, stats);
        assert_eq!(back.doc_freq("body", "mesh"), Some(7));
    }
}
