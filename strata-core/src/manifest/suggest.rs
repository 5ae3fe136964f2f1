//! "Did you mean …?": the closest candidate by edit distance, for misspelt keys and names.

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions, so that
/// `bugdet` is one edit from `budget`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let cols = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * cols];
    for i in 0..=a.len() {
        d[i * cols] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(cols) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * cols + j] + 1)
                .min(d[i * cols + j - 1] + 1)
                .min(d[(i - 1) * cols + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * cols + j - 2] + 1);
            }
            d[i * cols + j] = v;
        }
    }
    d[a.len() * cols + b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely misspelling
/// (at most a third of the word's length in edits, at least one allowed). Ties go to the
/// earlier candidate, so results are deterministic.
pub(crate) fn closest<'c, I>(word: &str, candidates: I) -> Option<&'c str>
where
    I: IntoIterator<Item = &'c str>,
{
    // Long inputs cannot be near any of our short names; skip the quadratic work.
    if word.chars().count() > 64 {
        return None;
    }
    let limit = (word.chars().count() / 3).max(1);
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &'c str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        // A difference only in case counts as one edit: a likely slip.
        let distance = if candidate.to_lowercase() == lower {
            1
        } else {
            edit_distance(word, candidate)
        };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("budget", "budget"), 0);
        assert_eq!(edit_distance("bugdet", "budget"), 1);
        assert_eq!(edit_distance("budgt", "budget"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions_are_close_and_deterministic() {
        let keys = [
            "exec",
            "capabilities",
            "after",
            "requires",
            "budget",
            "restart",
        ];
        assert_eq!(closest("bugdet", keys), Some("budget"));
        assert_eq!(closest("capabilites", keys), Some("capabilities"));
        assert_eq!(closest("Exec", keys), Some("exec"));
        assert_eq!(closest("zzz", keys), None);
        assert_eq!(closest("exec", keys), None);
    }
}
