use super::*;
use serde_json::json;

fn set(key: &str, value: serde_json::Value) -> Setting {
    Setting {
        key: key.into(),
        value,
    }
}

fn proposal(intent: Intent) -> Proposal {
    Proposal {
        origin_node: "a".into(),
        request_id: None,
        author: "test".into(),
        comment: String::new(),
        at: "2026-11-25T00:00:00Z".into(),
        intent,
    }
}

fn set_proposal(settings: Vec<Setting>) -> Proposal {
    proposal(Intent::Set { settings })
}

#[test]
fn cli_keys_mirror_json_shape() {
    let next = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.sample_rate", json!(0.2))],
    )
    .unwrap();
    let tree = serde_json::to_value(&next).unwrap();
    assert_eq!(tree["probes"]["http"]["sample_rate"], json!(0.2));
    assert_eq!(next.probes.tls.sample_rate, 1.0);
}

#[test]
fn cli_assignment_parses_json_or_string() {
    assert_eq!(
        parse_cli_assignment("probe.http.enabled=false")
            .unwrap()
            .value,
        json!(false)
    );
    assert_eq!(
        parse_cli_assignment("destination.main.endpoint=http://c:4317")
            .unwrap()
            .value,
        json!("http://c:4317")
    );
    assert!(parse_cli_assignment("probe.http.enabled").is_err());
}

#[test]
fn refuses_rate_outside_unit_interval_naming_field() {
    let error = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.sample_rate", json!(1.5))],
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("probe.http.sample_rate"), "{message}");
    assert!(message.contains("from 0 to 1"), "{message}");
}

#[test]
fn refuses_unknown_probe_listing_the_real_ones() {
    let error = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.ftp.enabled", json!(true))],
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("probe.ftp.enabled"), "{message}");
    assert!(message.contains("http, tls, tcp, process"), "{message}");
}

#[test]
fn refuses_unknown_field_and_wrong_type() {
    let unknown = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.rate", json!(1))],
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("sample_rate"), "{unknown}");
    let wrong = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.enabled", json!("yes"))],
    )
    .unwrap_err()
    .to_string();
    assert!(wrong.contains("true or false"), "{wrong}");
    let port = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.filters.include_ports", json!([70000]))],
    )
    .unwrap_err()
    .to_string();
    assert!(port.contains("include_ports"), "{port}");
}

#[test]
fn list_from_comma_string() {
    let next = apply_settings(
        &ClusterConfig::default(),
        &[set("probe.http.filters.include_ports", json!("80, 443"))],
    )
    .unwrap();
    assert_eq!(next.probes.http.filters.include_ports, vec![80, 443]);
}

#[test]
fn destinations_are_created_checked_and_removed() {
    let config = ClusterConfig::default();
    let bad = apply_settings(
        &config,
        &[set("destination.main.endpoint", json!("not a url"))],
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("destination.main.endpoint"), "{bad}");
    let bad_protocol = apply_settings(
        &config,
        &[
            set("destination.main.endpoint", json!("http://c:4317")),
            set("destination.main.protocol", json!("smtp")),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(bad_protocol.contains("http/protobuf"), "{bad_protocol}");
    let with = apply_settings(
        &config,
        &[
            set("destination.main.endpoint", json!("http://c:4318")),
            set("destination.main.protocol", json!("http/protobuf")),
        ],
    )
    .unwrap();
    assert_eq!(with.destinations["main"].protocol, Protocol::HttpProtobuf);
    let without = apply_settings(&with, &[set("destination.main", json!(null))]).unwrap();
    assert!(without.destinations.is_empty());
    assert!(apply_settings(&without, &[set("destination.main", json!(null))]).is_err());
}

#[test]
fn a_destination_chooses_what_a_full_buffer_does() {
    let with = apply_settings(
        &ClusterConfig::default(),
        &[set("destination.main.endpoint", json!("http://c:4318"))],
    )
    .unwrap();
    assert_eq!(with.destinations["main"].when_full, WhenFull::Default);
    let dropping =
        apply_settings(&with, &[set("destination.main.when_full", json!("drop"))]).unwrap();
    assert_eq!(dropping.destinations["main"].when_full, WhenFull::Drop);
    let bad = apply_settings(
        &with,
        &[set("destination.main.when_full", json!("sometimes"))],
    )
    .unwrap_err()
    .to_string();
    for choice in ["default", "refuse", "block", "drop"] {
        assert!(bad.contains(choice), "names {choice}: {bad}");
    }
}

#[test]
fn fold_equals_incremental_state_including_reverts() {
    let mut history = History::default();
    history
        .commit(&set_proposal(vec![set(
            "probe.http.sample_rate",
            json!(0.5),
        )]))
        .unwrap();
    history
        .commit(&set_proposal(vec![set("probe.tcp.enabled", json!(false))]))
        .unwrap();
    history
        .commit(&set_proposal(vec![set(
            "budget.cpu_percent_per_node",
            json!(5.0),
        )]))
        .unwrap();
    let event = history
        .commit(&proposal(Intent::Revert { to_version: 1 }))
        .unwrap();
    assert_eq!(event.version, 4);
    assert_eq!(history.current().probes.http.sample_rate, 0.5);
    assert!(history.current().probes.tcp.enabled);
    assert_eq!(history.current().budget.cpu_percent_per_node, 10.0);
    // Reverting the revert brings version 3 back.
    history
        .commit(&proposal(Intent::Revert { to_version: 3 }))
        .unwrap();
    assert!(!history.current().probes.tcp.enabled);
    history
        .commit(&proposal(Intent::Revert { to_version: 0 }))
        .unwrap();
    assert_eq!(history.current(), &ClusterConfig::default());

    assert_eq!(&fold(history.events()).unwrap(), history.current());
    for version in 0..=history.version() {
        let replayed = History::from_events(history.events()[..version as usize].to_vec()).unwrap();
        assert_eq!(replayed.current(), &history.config_at(version).unwrap());
    }
    let versions: Vec<u64> = history.events().iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>());
}

#[test]
fn past_versions_of_a_long_history_are_found_across_its_checkpoints() {
    let mut history = History::default();
    let long = 3 * CHECKPOINT_EVERY + 5;
    for i in 0..long {
        let rate = (i + 1) as f64 / (long + 1) as f64;
        history
            .commit(&set_proposal(vec![set(
                "probe.http.sample_rate",
                json!(rate),
            )]))
            .unwrap();
    }
    let target = (CHECKPOINT_EVERY + 3) as u64;
    history
        .commit(&proposal(Intent::Revert { to_version: target }))
        .unwrap();
    assert_eq!(history.current(), &history.config_at(target).unwrap());
    let edges = [CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY, 3 * CHECKPOINT_EVERY];
    let versions = edges
        .iter()
        .flat_map(|&edge| [edge - 1, edge, edge + 1])
        .chain([0, 1, long, long + 1]);
    let replayed = History::from_events(history.events().to_vec()).unwrap();
    for version in versions {
        let expected = fold(&history.events()[..version]).unwrap();
        assert_eq!(
            history.config_at(version as u64).unwrap(),
            expected,
            "v{version}"
        );
        assert_eq!(
            replayed.config_at(version as u64).unwrap(),
            expected,
            "v{version}"
        );
    }
    assert_eq!(replayed.current(), history.current());
}

#[test]
fn refused_changes_leave_no_event() {
    let mut history = History::default();
    assert!(history
        .commit(&set_proposal(vec![set(
            "probe.http.sample_rate",
            json!(-0.1)
        )]))
        .is_err());
    assert!(history.commit(&set_proposal(vec![])).is_err());
    let error = history
        .commit(&proposal(Intent::Revert { to_version: 9 }))
        .unwrap_err();
    assert_eq!(
        error,
        ConfigError::NoSuchVersion {
            requested: 9,
            latest: 0
        }
    );
    assert_eq!(history.version(), 0);
}

#[test]
fn events_round_trip_through_json() {
    let mut history = History::default();
    history
        .commit(&set_proposal(vec![set(
            "probe.http.sample_rate",
            json!(0.25),
        )]))
        .unwrap();
    history
        .commit(&proposal(Intent::Revert { to_version: 0 }))
        .unwrap();
    let text = serde_json::to_string(history.events()).unwrap();
    let back: Vec<ConfigEvent> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, history.events());
}

#[test]
fn diff_names_each_changed_key_with_old_and_new_values() {
    let before = ClusterConfig::default();
    let after = crate::apply_settings(
        &before,
        &[
            Setting {
                key: "probe.http.sample_rate".into(),
                value: serde_json::json!(0.5),
            },
            Setting {
                key: "destination.main.endpoint".into(),
                value: serde_json::json!("http://c:4318"),
            },
        ],
    )
    .unwrap();
    let changes = crate::diff(&before, &after);
    let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.contains(&"probe.http.sample_rate"), "{keys:?}");
    assert!(keys.contains(&"destination.main.endpoint"), "{keys:?}");
    let rate = changes
        .iter()
        .find(|c| c.key == "probe.http.sample_rate")
        .unwrap();
    assert_eq!(rate.from, Some(serde_json::json!(1.0)));
    assert_eq!(rate.to, Some(serde_json::json!(0.5)));
    assert!(crate::diff(&after, &after).is_empty());
}

fn with_secret_destination() -> ClusterConfig {
    crate::apply_settings(
        &ClusterConfig::default(),
        &[set(
            "destination.vendor",
            serde_json::json!({
                "endpoint": "https://user:hunter2@otlp.example:4318",
                "protocol": "http/protobuf",
                "headers": { "x-api-key": "sk-live-123", "authorization": "Bearer abc" }
            }),
        )],
    )
    .unwrap()
}

#[test]
fn secrets_never_leave_in_what_the_api_shows() {
    let config = with_secret_destination();
    let shown = serde_json::to_string(&config.redacted()).unwrap();
    for secret in ["hunter2", "sk-live-123", "Bearer abc"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let vendor = &config.redacted().destinations["vendor"];
    assert_eq!(vendor.headers["x-api-key"], crate::redact("sk-live-123"));
    assert_ne!(vendor.headers["x-api-key"], vendor.headers["authorization"]);
    assert!(
        vendor.endpoint.starts_with("https://user:"),
        "{}",
        vendor.endpoint
    );
    assert!(
        vendor.endpoint.ends_with("@otlp.example:4318/"),
        "{}",
        vendor.endpoint
    );
    // The stored config keeps the real values: they are what the sink sends.
    assert_eq!(
        config.destinations["vendor"].headers["x-api-key"],
        "sk-live-123"
    );

    // The history and diffs show markers too.
    let mut history = History::default();
    history
        .commit(&set_proposal(vec![set(
            "destination.vendor",
            serde_json::to_value(&config.destinations["vendor"]).unwrap(),
        )]))
        .unwrap();
    history
        .commit(&set_proposal(vec![set(
            "destination.vendor.headers.x-api-key",
            serde_json::json!("sk-live-456"),
        )]))
        .unwrap();
    history
        .commit(&proposal(Intent::Revert { to_version: 1 }))
        .unwrap();
    let events: Vec<ConfigEvent> = history.events().iter().map(ConfigEvent::redacted).collect();
    let shown = serde_json::to_string(&events).unwrap();
    for secret in ["hunter2", "sk-live-123", "sk-live-456", "Bearer abc"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let changes = crate::diff(
        &history.config_at(1).unwrap(),
        &history.config_at(2).unwrap(),
    );
    let shown = serde_json::to_string(&changes.iter().map(KeyChange::redacted).collect::<Vec<_>>())
        .unwrap();
    assert!(
        shown.contains("x-api-key") && !shown.contains("sk-live"),
        "{shown}"
    );
}

#[test]
fn a_redacted_config_written_back_keeps_its_secrets_and_a_stray_marker_is_refused() {
    let config = with_secret_destination();
    let shown = config.redacted();
    let round_trip = crate::apply_settings(
        &config,
        &[set(
            "destination.vendor",
            serde_json::to_value(&shown.destinations["vendor"]).unwrap(),
        )],
    )
    .unwrap();
    assert_eq!(round_trip, config);
    let stray = crate::apply_settings(
        &config,
        &[set(
            "destination.vendor.headers.x-api-key",
            serde_json::json!(crate::redact("something else")),
        )],
    )
    .unwrap_err();
    assert!(
        stray
            .to_string()
            .contains("destination.vendor.headers.x-api-key"),
        "{stray}"
    );
}

#[test]
fn api_public_read_is_off_by_default_and_settable() {
    let config = ClusterConfig::default();
    assert!(!config.api.public_read);
    let open = crate::apply_settings(&config, &[set("api.public_read", json!(true))]).unwrap();
    assert!(open.api.public_read);
    let wrong = crate::apply_settings(&config, &[set("api.public_read", json!("yes"))]);
    assert!(wrong.unwrap_err().to_string().contains("api.public_read"));
    // A config stored before `api` existed still reads.
    let mut old = serde_json::to_value(&config).unwrap();
    old.as_object_mut().unwrap().remove("api");
    let read: ClusterConfig = serde_json::from_value(old).unwrap();
    assert_eq!(read, config);
}

#[test]
fn oversized_changes_are_refused_naming_the_limit() {
    let history = History::default();
    let mut long_comment = set_proposal(vec![set("probe.http.sample_rate", json!(0.5))]);
    long_comment.comment = "x".repeat(crate::MAX_COMMENT_CHARS + 1);
    let error = history.check(&long_comment).unwrap_err().to_string();
    assert!(
        error.contains("comment") && error.contains("1000"),
        "{error}"
    );
    let mut long_author = set_proposal(vec![set("probe.http.sample_rate", json!(0.5))]);
    long_author.author = "y".repeat(crate::MAX_AUTHOR_CHARS + 1);
    assert!(history.check(&long_author).is_err());
    let many = (0..=crate::MAX_SETTINGS_PER_CHANGE)
        .map(|_| set("probe.http.sample_rate", json!(0.5)))
        .collect();
    let error = history.check(&set_proposal(many)).unwrap_err().to_string();
    assert!(error.contains("split it"), "{error}");
    let fine = set_proposal(vec![set("probe.http.sample_rate", json!(0.5))]);
    assert!(history.check(&fine).is_ok());
}

#[test]
fn filters_the_kernel_maps_cannot_hold_and_too_many_destinations_are_refused() {
    let history = History::default();
    let check = |settings: Vec<Setting>| history.check(&set_proposal(settings));
    let pids: Vec<u32> = (1..=crate::MAX_PID_FILTERS as u32 + 1).collect();
    let error = check(vec![set("probe.http.filters.exclude_pids", json!(pids))])
        .unwrap_err()
        .to_string();
    assert!(error.contains("at most 4096 pids"), "{error}");
    // The same count split over two probes is the same room.
    let half: Vec<u32> = (1..=2100).collect();
    assert!(check(vec![
        set("probe.http.filters.exclude_pids", json!(half)),
        set("probe.tls.filters.include_pids", json!(half)),
    ])
    .is_err());
    let fits: Vec<u32> = (1..=crate::MAX_PID_FILTERS as u32).collect();
    assert!(check(vec![set("probe.http.filters.exclude_pids", json!(fits))]).is_ok());
    let settings = (0..=crate::MAX_DESTINATIONS)
        .map(|i| {
            set(
                &format!("destination.d{i}.endpoint"),
                json!("http://collector:4318"),
            )
        })
        .collect();
    let error = check(settings).unwrap_err().to_string();
    assert!(error.contains("at most 16 destinations"), "{error}");
    // A history written before the limits replays as it was.
    let many: Vec<Setting> = (0..=crate::MAX_DESTINATIONS)
        .map(|i| {
            set(
                &format!("destination.d{i}.endpoint"),
                json!("http://collector:4318"),
            )
        })
        .collect();
    let mut old = History::default();
    assert!(old.commit(&set_proposal(many)).is_ok());
    assert!(History::from_events(old.events().to_vec()).is_ok());
}

#[test]
fn a_header_named_with_dots_is_redacted_in_diffs_too() {
    let config = crate::apply_settings(
        &ClusterConfig::default(),
        &[set(
            "destination.x",
            json!({ "endpoint": "http://c:4318", "protocol": "http/protobuf",
                    "headers": { "x.api.key": "S3CRET" } }),
        )],
    )
    .unwrap();
    let changes = crate::diff(&ClusterConfig::default(), &config);
    let shown = serde_json::to_string(&changes.iter().map(KeyChange::redacted).collect::<Vec<_>>())
        .unwrap();
    assert!(
        shown.contains("x.api.key") && !shown.contains("S3CRET"),
        "{shown}"
    );
}

/// A header not set before is a new key (before the fix: "unknown key … allowed here:"), null
/// removes one, and a name that is no HTTP token is refused.
#[test]
fn destination_headers_are_set_one_by_one() {
    let config = crate::apply_settings(
        &ClusterConfig::default(),
        &[
            set(
                "destination.main.endpoint",
                serde_json::json!("http://c:4318"),
            ),
            set(
                "destination.main.headers.x-api-key",
                serde_json::json!("k1"),
            ),
            set("destination.main.headers.x-tenant", serde_json::json!("t")),
        ],
    )
    .unwrap();
    assert_eq!(config.destinations["main"].headers.len(), 2);
    let config = crate::apply_settings(
        &config,
        &[set(
            "destination.main.headers.x-tenant",
            serde_json::Value::Null,
        )],
    )
    .unwrap();
    assert_eq!(
        config.destinations["main"]
            .headers
            .keys()
            .collect::<Vec<_>>(),
        ["x-api-key"]
    );
    let error = crate::apply_settings(
        &config,
        &[set(
            "destination.main.headers.bad name",
            serde_json::json!("v"),
        )],
    )
    .unwrap_err();
    assert!(error.to_string().contains("an HTTP header name"), "{error}");
}

fn keyed(value: f64, id: &str) -> Proposal {
    Proposal {
        request_id: Some(id.into()),
        ..set_proposal(vec![set("probe.http.sample_rate", json!(value))])
    }
}

#[test]
fn a_retried_proposal_commits_once_within_the_window() {
    let mut history = History::default();
    assert_eq!(history.commit(&keyed(0.5, "r1")).unwrap().version, 1);
    assert_eq!(history.commit(&keyed(0.25, "r2")).unwrap().version, 2);
    // The retry of r1 is the event r1 made, not a third version.
    let retried = history.commit(&keyed(0.5, "r1")).unwrap();
    assert_eq!(retried.version, 1);
    assert_eq!(history.version(), 2);
    assert_eq!(history.current().probes.http.sample_rate, 0.25);
    // Proposals without a key are never merged.
    let plain = set_proposal(vec![set("probe.http.sample_rate", json!(0.5))]);
    history.commit(&plain).unwrap();
    history.commit(&plain).unwrap();
    assert_eq!(history.version(), 4);
    // A key older than the window commits again.
    for i in 0..IDEMPOTENCY_WINDOW {
        history.commit(&keyed(0.1, &format!("filler{i}"))).unwrap();
    }
    let late = history.commit(&keyed(0.5, "r1")).unwrap().version;
    assert_eq!(late, 4 + IDEMPOTENCY_WINDOW as u64 + 1);
}

#[test]
fn request_ids_are_kept_in_the_event_and_checked() {
    let mut history = History::default();
    let event = history.commit(&keyed(0.5, "abc")).unwrap();
    assert_eq!(event.request_id.as_deref(), Some("abc"));
    let json = serde_json::to_value(event).unwrap();
    assert_eq!(json["request_id"], "abc");
    // An event stored before the field existed still reads.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("request_id");
    let event: ConfigEvent = serde_json::from_value(old).unwrap();
    assert_eq!(event.request_id, None);
    for bad in [
        String::new(),
        "x".repeat(MAX_REQUEST_ID_CHARS + 1),
        "a\nb".into(),
    ] {
        let error = history.check(&keyed(0.5, &bad)).unwrap_err().to_string();
        assert!(error.contains("Idempotency-Key"), "{error}");
    }
}

#[test]
fn a_history_with_a_lost_event_is_refused_not_shifted() {
    let mut history = History::default();
    for bytes in [300, 301, 302] {
        history
            .commit(&set_proposal(vec![set(
                "probe.http.capture_bytes",
                json!(bytes),
            )]))
            .unwrap();
    }
    let mut events = history.events().to_vec();
    events.remove(1);
    let error = History::from_events(events).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::OutOfSequence {
                position: 2,
                found: 3
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("join it again"), "{error}");
}
