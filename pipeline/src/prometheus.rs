//! The Prometheus text exposition format's one rule every exporter of this workspace shares.

/// A label value escaped for the Prometheus text format: backslash, double quote and newline
/// become `\\`, `\"` and `\n`; everything else is written as it is.
pub fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_backslash_quote_and_newline_only() {
        assert_eq!(escape_label_value("/cart/{id}"), "/cart/{id}");
        assert_eq!(escape_label_value("a\\b\"c\nd\te"), "a\\\\b\\\"c\\nd\te");
        assert_eq!(escape_label_value(""), "");
    }
}
