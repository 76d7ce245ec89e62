//! `apiary trace ID`: one trace's spans gathered from every member (`GET /v1/traces/{id}`), as
//! a tree (each span under its parent) or JSON; members that did not answer are named.

use std::collections::HashMap;

use anyhow::Result;
use apiary_api_types::TraceView;
use serde_json::Value;

use super::client::{parse, print_json, table, Client, ClientArgs};

pub async fn trace(args: &ClientArgs, trace_id: &str) -> Result<()> {
    let client = Client::new(args)?;
    let answer = client.get(&format!("/v1/traces/{trace_id}")).await?;
    if args.json {
        return print_json(&answer);
    }
    let view: TraceView = parse(&answer, "GET /v1/traces")?;
    if view.spans.is_empty() {
        println!(
            "no member holds spans of trace {} (asked: {})",
            view.trace_id,
            view.answered.join(", ")
        );
    } else {
        let mut rows = table(&[
            "SPAN", "NODE", "SERVICE", "KIND", "REQUEST", "STATUS", "DURATION", "LINK",
        ]);
        for (depth, span) in tree(&view.spans) {
            let name = format!(
                "{}{} {}",
                "  ".repeat(depth),
                text(span, "method"),
                text(span, "target")
            );
            rows.add_row(vec![
                text(&span["trace"], "span_id"),
                text(span, "node"),
                text(span, "service"),
                text(span, "kind"),
                name,
                span["status"].to_string(),
                format!(
                    "{:.1} ms",
                    span["duration_ns"].as_f64().unwrap_or(0.0) / 1e6
                ),
                text(&span["trace"], "link"),
            ]);
        }
        println!("trace {}: {} spans", view.trace_id, view.spans.len());
        println!("{rows}");
    }
    for missing in &view.missing {
        println!("not answered: {} ({})", missing.node, missing.error);
    }
    Ok(())
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or("-").to_string()
}

/// The spans in depth-first order under their parents, each with its depth; a span whose parent
/// is not among them is a root of the tree (its parent is on a member that did not answer, or
/// was not kept). Spans are in start order, and so are siblings.
fn tree(spans: &[Value]) -> Vec<(usize, &Value)> {
    let id = |s: &Value| s["trace"]["span_id"].as_str().map(str::to_string);
    let known: std::collections::HashSet<String> = spans.iter().filter_map(id).collect();
    let mut children: HashMap<Option<String>, Vec<&Value>> = HashMap::new();
    for span in spans {
        let parent = span["trace"]["parent_span_id"]
            .as_str()
            .filter(|p| known.contains(*p))
            .map(str::to_string);
        children.entry(parent).or_default().push(span);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &Value)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (0, *s)).collect())
        .unwrap_or_default();
    while let Some((depth, span)) = stack.pop() {
        out.push((depth, span));
        if out.len() > spans.len() {
            break; // a cycle in bad data: stop rather than loop
        }
        if let Some(kids) = id(span).and_then(|i| children.get(&Some(i))) {
            stack.extend(kids.iter().rev().map(|s| (depth + 1, *s)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tree;
    use serde_json::json;

    #[test]
    fn children_sit_under_their_parents() {
        let span = |id: &str, parent: Option<&str>| json!({"trace": {"span_id": id, "parent_span_id": parent}});
        let spans = vec![
            span("a", None),
            span("b", Some("a")),
            span("c", Some("b")),
            span("d", Some("elsewhere")),
        ];
        let order: Vec<(usize, String)> = tree(&spans)
            .into_iter()
            .map(|(depth, s)| (depth, s["trace"]["span_id"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, "a".into()),
                (1, "b".into()),
                (2, "c".into()),
                (0, "d".into())
            ]
        );
    }
}
