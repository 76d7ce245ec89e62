//! `slo.<service>.*`: set, checked, named in errors, removed.

use crate::{apply_settings, flatten, value_at, ClusterConfig, ConfigError, Setting};
use serde_json::{json, Value};

fn set(key: &str, value: Value) -> Setting {
    Setting {
        key: key.to_string(),
        value,
    }
}

#[test]
fn objectives_are_set_per_service_even_with_dots_in_its_name() {
    let config = apply_settings(
        &ClusterConfig::default(),
        &[
            set("slo.web.p99_ms", json!(250)),
            set("slo.python3.11.error_rate", json!(0.02)),
            set("slo.web.error_rate", json!("0.005")),
        ],
    )
    .unwrap();
    assert_eq!(config.slos["web"].p99_ms, Some(250.0));
    assert_eq!(config.slos["web"].error_rate, Some(0.005));
    assert_eq!(config.slos["python3.11"].error_rate, Some(0.02));
    assert_eq!(config.slos["python3.11"].p99_ms, None);
    assert_eq!(value_at(&config, "slo.web.p99_ms"), Some(json!(250.0)));
    assert_eq!(
        value_at(&config, "slo.python3.11.error_rate"),
        Some(json!(0.02))
    );
    let keys: Vec<String> = flatten(&serde_json::to_value(&config).unwrap())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"slo.web.p99_ms".to_string()), "{keys:?}");
    // Unsetting both fields removes the service; `slo.NAME=null` removes it at once.
    let config = apply_settings(
        &config,
        &[
            set("slo.web.p99_ms", Value::Null),
            set("slo.web.error_rate", Value::Null),
            set("slo.python3.11", Value::Null),
        ],
    )
    .unwrap();
    assert!(config.slos.is_empty(), "{:?}", config.slos);
}

#[test]
fn bad_objectives_are_refused_naming_the_key_and_what_is_allowed() {
    let base = ClusterConfig::default();
    let refuse = |key: &str, value: Value| -> String {
        apply_settings(&base, &[set(key, value)])
            .unwrap_err()
            .to_string()
    };
    let message = refuse("slo.web.p99_ms", json!(-5));
    assert!(
        message.contains("slo.web.p99_ms") && message.contains("greater than 0"),
        "{message}"
    );
    let message = refuse("slo.web.error_rate", json!(1.5));
    assert!(
        message.contains("slo.web.error_rate") && message.contains("below 1"),
        "{message}"
    );
    let message = refuse("slo.web.p99_ms", json!("fast"));
    assert!(message.contains("a number"), "{message}");
    let message = refuse("slo.web.latency", json!(3));
    assert!(message.contains("slo.<service>.p99_ms"), "{message}");
    let message = refuse("slo.web", Value::Null);
    assert!(message.contains("no objectives for `web`"), "{message}");
    let message = refuse("slo.my service.p99_ms", json!(3));
    assert!(message.contains("without spaces"), "{message}");
    assert!(matches!(
        apply_settings(&base, &[set("slo.web.p99_ms", json!(0))]),
        Err(ConfigError::Invalid { .. })
    ));
}

/// A config written before objectives existed still reads, with none.
#[test]
fn configs_without_objectives_still_parse() {
    let mut tree = serde_json::to_value(ClusterConfig::default()).unwrap();
    tree.as_object_mut().unwrap().remove("slos");
    let config: ClusterConfig = serde_json::from_value(tree).unwrap();
    assert!(config.slos.is_empty());
}

/// `predict.webhook.url`: set and read back, checked, its password shown as a marker, and the
/// marker written back keeps the real URL.
#[test]
fn the_prediction_webhook_is_a_checked_url_whose_password_is_not_shown() {
    let url = "https://apiary:s3cret@hooks.example.com/predictions";
    let config = apply_settings(
        &ClusterConfig::default(),
        &[set("predict.webhook.url", json!(url))],
    )
    .unwrap();
    assert_eq!(config.predict.webhook.url, url);
    assert_eq!(value_at(&config, "predict.webhook.url"), Some(json!(url)));
    let shown = config.redacted().predict.webhook.url;
    assert!(!shown.contains("s3cret"), "{shown}");
    let written_back =
        apply_settings(&config, &[set("predict.webhook.url", json!(shown.clone()))]).unwrap();
    assert_eq!(written_back.predict.webhook.url, url);
    let shown_setting = set("predict.webhook.url", json!(url)).redacted();
    assert!(!shown_setting.value.to_string().contains("s3cret"));
    // A secret in the path (as chat webhooks carry theirs) is not shown either, and written
    // back it stands for the real URL.
    let in_path = "https://hooks.example.com/services/T000/B000/XyZsecretToken?x=1";
    let config = apply_settings(&config, &[set("predict.webhook.url", json!(in_path))]).unwrap();
    let shown = config.redacted().predict.webhook.url;
    assert!(
        !shown.contains("XyZsecretToken") && shown.starts_with("https://hooks.example.com/"),
        "{shown}"
    );
    let shown_setting = set("predict.webhook.url", json!(in_path)).redacted();
    assert!(!shown_setting.value.to_string().contains("XyZsecretToken"));
    let written_back =
        apply_settings(&config, &[set("predict.webhook.url", json!(shown))]).unwrap();
    assert_eq!(written_back.predict.webhook.url, in_path);
    let plain = apply_settings(
        &config,
        &[set(
            "predict.webhook.url",
            json!("https://hooks.example.com/"),
        )],
    )
    .unwrap();
    assert_eq!(
        plain.redacted().predict.webhook.url,
        "https://hooks.example.com/"
    );
    for bad in ["ftp://hooks.example.com/", "hooks.example.com", "https://"] {
        let error = apply_settings(
            &ClusterConfig::default(),
            &[set("predict.webhook.url", json!(bad))],
        )
        .unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { key, .. } if key == "predict.webhook.url"),
            "{bad}: {error}"
        );
    }
    // Empty turns it off.
    let off = apply_settings(&config, &[set("predict.webhook.url", json!(""))]).unwrap();
    assert_eq!(off.predict.webhook.url, "");
}
