//! The one line a binary prints when it fails: the error and its causes,
//! each said once. Libraries' errors often repeat their cause in their own
//! message (object_store, redb), so a plain `{:#}` would say it twice or
//! three times.

/// `e` and its sources joined with ": ", skipping any text already said.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("uploading the backup: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let e = Outer(std::io::Error::other("no space left on device"));
        assert_eq!(
            one_line(&e),
            "uploading the backup: no space left on device"
        );
        let plain = std::io::Error::other("disk full");
        assert_eq!(one_line(&plain), "disk full");
    }
}
