//! "Did you mean" suggestions by edit distance.

/// Edit distance counting insertions, deletions, substitutions and swaps of two adjacent
/// characters (optimal string alignment), so `depht` is one edit from `depth`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The closest candidate within a third of the name's length (at least 1 edit), if there
/// is exactly one at that distance (a tie would be a guess, so it suggests nothing).
pub fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let mut close: Vec<(usize, &str)> = candidates
        .filter(|c| *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    close.sort_unstable();
    close.dedup();
    match close.as_slice() {
        [(_, c)] => Some(*c),
        [(d0, c), (d1, _), ..] if d0 < d1 => Some(*c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["channels", "conv", "crp", "relu"];
        assert_eq!(
            did_you_mean("chanels", names.iter().copied()),
            Some("channels")
        );
        assert_eq!(did_you_mean("rleu", names.iter().copied()), Some("relu"));
        assert_eq!(did_you_mean("softmax", names.iter().copied()), None);
        assert_eq!(
            did_you_mean("depht", ["depth", "width"].into_iter()),
            Some("depth")
        );
        assert_eq!(
            did_you_mean("s5", ["s1", "s2", "s3", "s4"].into_iter()),
            None
        );
    }
}
