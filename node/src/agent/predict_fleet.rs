//! `GET /v1/predictions?scope=cluster`: every member's predictions gathered over the mesh
//! (`Service::Predictions`), as `GET /v1/traces/{id}` gathers a trace: at most [`FAN_OUT`]
//! members asked at once, [`MEMBER_TIMEOUT`] each, and an answer without some members names
//! them and why.

use std::time::Duration;

use apiary_api_types::MissingMember;
use apiary_consensus::network::call_json;
use apiary_consensus::Consensus;
use apiary_wire::{Message, Service};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::predict::Predictor;

const FAN_OUT: usize = 8;
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes one member answers with, under the wire's 16 MiB frame.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// This node's `GET /v1/predictions` answer, naming it.
pub fn local(predictor: &Predictor, node: &str) -> Value {
    let mut answer = predictor.status();
    answer["node"] = json!(node);
    answer
}

/// Answers a member's `Predictions` request (its payload is ignored).
pub fn answer(predictor: &Predictor, node: &str) -> Message {
    match serde_json::to_vec(&local(predictor, node)) {
        Ok(payload) if payload.len() > MAX_ANSWER_BYTES => Message::Refused {
            reason: format!(
                "this node's predictions take {} bytes, more than one answer carries \
                 ({MAX_ANSWER_BYTES}); lower --predict-history",
                payload.len()
            ),
        },
        Ok(payload) => Message::Response { payload },
        Err(e) => Message::Refused {
            reason: format!("cannot encode the predictions: {e}"),
        },
    }
}

/// Every member's predictions: `active` and `events` of all of them, each naming its node
/// (active ones soonest breach first, events oldest first), `nodes` with each member's own
/// answer but those two lists (objectives, cost, history), and `answered` and `missing`.
pub async fn gather(consensus: &Consensus, predictor: &Predictor, node_name: &str) -> Value {
    let me = consensus.id();
    let others: Vec<_> = consensus
        .status()
        .members
        .into_iter()
        .filter(|m| m.id != me)
        .collect();
    let mut answers = vec![(node_name.to_string(), local(predictor, node_name))];
    let mut missing = Vec::new();
    let mut asks = futures_util::stream::iter(others)
        .map(|member| async move {
            let answer: Result<Value, _> = call_json(
                consensus.transport(),
                &member.address,
                Some(member.id),
                Service::Predictions,
                &(),
                MEMBER_TIMEOUT,
            )
            .await;
            (member.name, answer)
        })
        .buffer_unordered(FAN_OUT);
    while let Some((name, answer)) = asks.next().await {
        match answer {
            Ok(theirs) => answers.push((name, theirs)),
            Err(e) => missing.push(MissingMember {
                node: name,
                error: e.to_string(),
            }),
        }
    }
    merge(answers, missing)
}

fn merge(answers: Vec<(String, Value)>, missing: Vec<MissingMember>) -> Value {
    let mut active = Vec::new();
    let mut events = Vec::new();
    let mut nodes = serde_json::Map::new();
    let mut answered = Vec::new();
    for (name, mut answer) in answers {
        let named = |list: Value| -> Vec<Value> {
            let Value::Array(items) = list else {
                return Vec::new();
            };
            items
                .into_iter()
                .map(|mut item| {
                    item["node"] = json!(name);
                    item
                })
                .collect()
        };
        if let Some(object) = answer.as_object_mut() {
            active.extend(named(object.remove("active").unwrap_or_default()));
            events.extend(named(object.remove("events").unwrap_or_default()));
        }
        answered.push(name.clone());
        nodes.insert(name, answer);
    }
    let number = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::MAX);
    active.sort_by(|a, b| number(a, "breach_at").total_cmp(&number(b, "breach_at")));
    events.sort_by(|a, b| number(a, "at").total_cmp(&number(b, "at")));
    answered.sort();
    json!({
        "scope": "cluster",
        "active": active,
        "events": events,
        "nodes": nodes,
        "answered": answered,
        "missing": missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_merged_each_item_naming_its_node() {
        let a = json!({
            "active": [{"id": "web/p99/queueing", "breach_at": 200.0}],
            "events": [{"at": 50.0, "kind": "raised"}],
            "interval_seconds": 5.0,
        });
        let b = json!({
            "active": [{"id": "db/memory/trend", "breach_at": 100.0}],
            "events": [{"at": 10.0, "kind": "raised"}, {"at": 60.0, "kind": "resolved"}],
        });
        let merged = merge(
            vec![("n2".into(), a), ("n1".into(), b)],
            vec![MissingMember {
                node: "n3".into(),
                error: "did not answer".into(),
            }],
        );
        let active = merged["active"].as_array().unwrap();
        assert_eq!(active[0]["node"], "n1", "soonest breach first: {merged}");
        assert_eq!(active[1]["node"], "n2");
        let at: Vec<f64> = merged["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["at"].as_f64().unwrap())
            .collect();
        assert_eq!(at, [10.0, 50.0, 60.0]);
        assert_eq!(merged["answered"], json!(["n1", "n2"]));
        assert_eq!(merged["missing"][0]["node"], "n3");
        assert_eq!(merged["nodes"]["n2"]["interval_seconds"], 5.0);
        assert!(merged["nodes"]["n2"].get("active").is_none());
    }
}
