use apiary_config::{ClusterConfig, Signer, Trust};

use crate::format::{Metadata, Profile};
use crate::signature::{generate_key, public_key_line, sign, verify, SignatureError};
use crate::{catalogue, check, export::export, ProfileError};

const GOOD: &str = r#"# a comment is signed too
[profile]
name = "test-profile"
version = 2
summary = "for tests"
author = "tests"
stack = "any"
min_apiary_version = "0.1.0"

[settings]
"probe.http.sample_rate" = 0.25
probe.tcp.enabled = false
"budget.always_keep.slower_than_ms" = 300
"#;

fn trusting(public: &str) -> ClusterConfig {
    ClusterConfig {
        trust: Trust {
            profile_keys: vec![public_key_line(public).unwrap()],
        },
        ..ClusterConfig::default()
    }
}

#[test]
fn a_good_profile_reads_and_makes_the_config_it_says() {
    let profile = Profile::parse(GOOD).unwrap();
    assert_eq!(profile.metadata.name, "test-profile");
    assert_eq!(profile.metadata.version, "2");
    let keys: Vec<_> = profile
        .settings
        .iter()
        .map(|s| s.setting.key.as_str())
        .collect();
    assert!(keys.contains(&"probe.tcp.enabled"), "{keys:?}");
    let after = profile.validate(&ClusterConfig::default()).unwrap();
    assert_eq!(after.probes.http.sample_rate, 0.25);
    assert!(!after.probes.tcp.enabled);
    assert_eq!(after.budget.always_keep.slower_than_ms, 300);
}

#[test]
fn every_bad_setting_is_one_problem_with_its_key_and_line() {
    let text = GOOD
        .replace("0.25", "7.5")
        .replace("probe.tcp.enabled = false", "probe.tcp.enabled = \"maybe\"")
        .replace(
            "\"budget.always_keep.slower_than_ms\" = 300",
            "\"probe.htp.enabled\" = true\n\"trust.profile_keys\" = []",
        );
    let profile = Profile::parse(&text).unwrap();
    let problems = profile.validate(&ClusterConfig::default()).unwrap_err().0;
    let found: Vec<(String, Option<usize>)> =
        problems.iter().map(|p| (p.key.clone(), p.line)).collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(
        found.contains(&("probe.http.sample_rate".into(), Some(11))),
        "{found:?}"
    );
    assert!(
        found.contains(&("probe.tcp.enabled".into(), Some(12))),
        "{found:?}"
    );
    assert!(
        found.contains(&("probe.htp.enabled".into(), Some(13))),
        "{found:?}"
    );
    assert!(
        found.contains(&("trust.profile_keys".into(), Some(14))),
        "{found:?}"
    );
    let shown = crate::Problems(problems).to_string();
    assert!(
        shown.contains("line 11: `probe.http.sample_rate`: invalid value 7.5"),
        "{shown}"
    );
    assert!(shown.contains("not a probe"), "{shown}");
}

#[test]
fn metadata_problems_are_all_reported() {
    let text = GOOD
        .replace("name = \"test-profile\"", "name = \"Bad Name\"")
        .replace("author = \"tests\"\n", "")
        .replace("stack = \"any\"", "stack = \"any\"\ncolour = \"red\"");
    let problems = Profile::parse(&text).unwrap_err().0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 3, "{problems:?}");
    for key in ["profile.name", "profile.author", "profile.colour"] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    let syntax = Profile::parse("[profile\nname = 1").unwrap_err().0;
    assert_eq!(syntax[0].line, Some(1), "{syntax:?}");
    assert!(Profile::parse(&GOOD.replace("0.1.0", "99.0.0"))
        .unwrap()
        .check_version(env!("CARGO_PKG_VERSION"))
        .is_err());
}

#[test]
fn signed_verifies_tampered_and_untrusted_do_not() {
    let (public, secret) = generate_key("test key").unwrap();
    let signature = sign(GOOD.as_bytes(), &secret, None, "by the tests").unwrap();
    let base = trusting(&public);
    let checked = check(GOOD, Some(&signature), &base, false, "0.1.0").unwrap();
    let Signer::Trusted { key_id, comment } = &checked.signer else {
        panic!("{:?}", checked.signer)
    };
    assert_eq!(comment, "by the tests");
    assert_eq!(
        public.lines().next().unwrap().split(' ').next_back(),
        Some(key_id.as_str())
    );

    // One byte of the body changed: refused even with a trusted key, and said why.
    let tampered = GOOD.replace("0.25", "0.35");
    let error = check(&tampered, Some(&signature), &base, false, "0.1.0").unwrap_err();
    assert!(
        matches!(
            error,
            ProfileError::Signature(SignatureError::Mismatch { .. })
        ),
        "{error}"
    );

    // Another key's signature, and none at all: refused without the flag.
    let (_, other_secret) = generate_key("someone else").unwrap();
    let foreign = sign(GOOD.as_bytes(), &other_secret, None, "elsewhere").unwrap();
    let error = check(GOOD, Some(&foreign), &base, false, "0.1.0").unwrap_err();
    assert!(error.to_string().contains("does not trust"), "{error}");
    let error = check(GOOD, None, &base, false, "0.1.0").unwrap_err();
    assert!(matches!(
        error,
        ProfileError::Signature(SignatureError::Missing)
    ));

    // With --allow-unsigned, applied and recorded as unverified.
    let checked = check(GOOD, Some(&foreign), &base, true, "0.1.0").unwrap();
    assert!(
        matches!(&checked.signer, Signer::Unverified { reason } if reason.contains("untrusted key")),
        "{:?}",
        checked.signer
    );
    // The flag does not let a malformed profile through.
    assert!(check(&GOOD.replace("0.25", "9"), None, &base, true, "0.1.0").is_err());
    assert!(matches!(
        verify(
            GOOD.as_bytes(),
            Some("not\na\nsignature"),
            &base.trust.profile_keys
        ),
        Err(SignatureError::Malformed(_))
    ));
}

#[test]
fn an_exported_config_reads_back_as_the_same_config() {
    let mut config = ClusterConfig::default();
    config.probes.http.sample_rate = 0.1;
    config.probes.tls.filters.include_ports = vec![443, 8443];
    config.privacy.keep_query_params = vec!["page".into()];
    config.api.public_read = true;
    let metadata = Metadata {
        name: "mine".into(),
        version: "1".into(),
        summary: "exported".into(),
        author: "me".into(),
        stack: "any".into(),
        min_apiary_version: "0.1.0".into(),
        time_limit: None,
    };
    let (text, skipped) = export(&metadata, &ClusterConfig::default(), &config);
    assert_eq!(skipped, vec!["api.public_read".to_string()], "{text}");
    let read = Profile::parse(&text).unwrap();
    let after = read.validate(&ClusterConfig::default()).unwrap();
    let expected = ClusterConfig {
        api: Default::default(),
        ..config
    };
    assert_eq!(after, expected, "{text}");
}

/// A key renamed in the config model breaks this test, not a user applying a profile.
#[test]
fn every_catalogue_profile_is_valid_and_signed_by_the_project() {
    let defaults = ClusterConfig::default();
    assert!(catalogue::CATALOGUE.len() >= 8);
    for entry in catalogue::CATALOGUE {
        let checked = check(
            entry.text,
            Some(entry.signature),
            &defaults,
            false,
            env!("CARGO_PKG_VERSION"),
        )
        .unwrap_or_else(|e| panic!("profiles/{}.toml: {e}", entry.name));
        assert_eq!(checked.profile.metadata.name, entry.name);
        assert!(
            matches!(checked.signer, Signer::Trusted { .. }),
            "{}",
            entry.name
        );
        assert_ne!(checked.after, defaults, "{} changes nothing", entry.name);
    }
    let incident = catalogue::find("incident-full-capture").unwrap();
    assert!(Profile::parse(incident.text)
        .unwrap()
        .time_limit()
        .is_some());
}
