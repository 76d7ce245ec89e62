//! A configuration profile from anyone (`POST /v1/profiles/apply`, `apiary profile
//! verify|import`), checked as the node checks it: `apiary_profile::check` on the defaults with
//! the project's key trusted, then the apply committed to a history as the leader would, and its
//! end if it is time-limited.
//!
//! Input: a selector byte (odd: `allow_unsigned`, so that an unsigned file's settings are checked
//! too), then UTF-8 text: the profile, and after the first NUL, its `.minisig` text.
#![no_main]

use apiary_config::{ClusterConfig, History, Intent, ProfileStamp, Proposal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (choice, rest) = apiary_fuzz::selector(data);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (profile, signature) = match text.split_once('\0') {
        Some((profile, signature)) => (profile, Some(signature)),
        None => (text, None),
    };
    let base = ClusterConfig::default();
    let _ = apiary_profile::signature::verify(
        profile.as_bytes(),
        signature,
        &base.trust.profile_keys,
    );
    let Ok(checked) = apiary_profile::check(profile, signature, &base, choice % 2 == 1, "0.1.0")
    else {
        return;
    };
    let _ = apiary_config::diff(&base, &checked.after);
    let proposal = |intent| Proposal {
        origin_node: "fuzz".into(),
        request_id: None,
        author: "fuzz".into(),
        comment: String::new(),
        at: "2026-12-02T00:00:00Z".into(),
        intent,
    };
    let apply = proposal(Intent::ApplyProfile {
        settings: checked.profile.plain_settings(),
        profile: ProfileStamp {
            name: checked.profile.metadata.name.clone(),
            version: checked.profile.metadata.version.clone(),
            signer: checked.signer.clone(),
            expires_at_unix: checked.profile.time_limit().map(|d| d.as_secs()),
        },
    });
    let mut history = History::default();
    if history.check(&apply).is_err() {
        return;
    }
    // What the node checked, the history commits: the same config.
    let event = history.commit(&apply).expect("a checked profile commits");
    assert_eq!(event.version, 1);
    assert_eq!(history.current(), &checked.after);
    if checked.profile.time_limit().is_some() {
        history
            .commit(&proposal(Intent::EndProfile { version: 1 }))
            .expect("a time-limited profile ends");
        assert_eq!(history.current(), &base);
    }
});
