//! The rotation driver: takes the cluster through stage, switch and finish, each step only
//! once every member has applied the one before; and the report of where each member stands.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apiary_consensus::ca::{CaPhase, CaState, CaStep};
use apiary_consensus::network::call_json;
use apiary_consensus::Consensus;
use apiary_wire::{ClusterCa, Message, Service};
use serde::{Deserialize, Serialize};

use super::{hex_fingerprint, Applied, CaRuntime};

/// How long the driver waits for every member to apply one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the driver waits for every member before it proposes anything.
const FIRST_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One member's answer in a rotation report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberCa {
    pub name: String,
    pub epoch: Option<u64>,
    pub phase: Option<CaPhase>,
    /// Why the member did not answer, if it did not.
    pub error: Option<String>,
}

/// What `GET /v1/ca` and a finished rotation report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaReport {
    /// SHA-256 of the CA this node presents, as in the join token.
    pub fingerprint: String,
    pub epoch: u64,
    pub phase: Option<CaPhase>,
    pub members: Vec<MemberCa>,
    /// This node's own certificate.
    pub certificate: Option<CertificateReport>,
}

/// A node's certificate as `GET /v1/ca` and `apiary doctor` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateReport {
    pub serial: String,
    pub expires_at: String,
    /// When the node asks a CA holder for a new one (a third of the lifetime before expiry).
    pub renew_at: String,
    /// Negative once expired.
    pub expires_in_seconds: i64,
    pub renew_in_seconds: i64,
    /// Whether this node holds the CA key (voters do; learners never).
    pub holds_ca_key: bool,
}

fn seconds_from_now(at: std::time::SystemTime) -> i64 {
    let now = std::time::SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    }
}

fn certificate_report(runtime: &CaRuntime) -> Option<CertificateReport> {
    let info = apiary_wire::tls::cert_info(&runtime.node_cert()).ok()?;
    let format = |at| humantime::format_rfc3339_seconds(at).to_string();
    Some(CertificateReport {
        serial: info.serial.clone(),
        expires_at: format(info.not_after),
        renew_at: format(info.renew_at()),
        expires_in_seconds: seconds_from_now(info.not_after),
        renew_in_seconds: seconds_from_now(info.renew_at()),
        holds_ca_key: runtime.holds_key(),
    })
}

/// Asks every member which rotation step it has applied (this node answers for itself).
async fn member_states(consensus: &Consensus, runtime: &CaRuntime) -> Vec<MemberCa> {
    let asks = consensus
        .status()
        .members
        .into_iter()
        .map(|member| async move {
            let answer: Result<Applied, _> = if member.id == consensus.id() {
                Ok(runtime.applied())
            } else {
                call_json(
                    consensus.transport(),
                    &member.address,
                    Some(member.id),
                    Service::CaStatus,
                    &(),
                    Duration::from_secs(2),
                )
                .await
            };
            match answer {
                Ok(applied) => MemberCa {
                    name: member.name,
                    epoch: applied.map(|a| a.0),
                    phase: applied.map(|a| a.1),
                    error: None,
                },
                Err(e) => MemberCa {
                    name: member.name,
                    epoch: None,
                    phase: None,
                    error: Some(e.to_string()),
                },
            }
        });
    futures_util::future::join_all(asks).await
}

pub async fn report(consensus: &Consensus, runtime: &CaRuntime) -> CaReport {
    let applied = runtime.applied();
    CaReport {
        fingerprint: runtime.fingerprint(),
        epoch: applied.map_or(0, |a| a.0),
        phase: applied.map(|a| a.1),
        members: member_states(consensus, runtime).await,
        certificate: certificate_report(runtime),
    }
}

/// Answers a peer's `CaStatus` request.
pub fn answer_status(runtime: &CaRuntime) -> Message {
    match serde_json::to_vec(&runtime.applied()) {
        Ok(payload) => Message::Response { payload },
        Err(e) => Message::Refused {
            reason: format!("cannot encode the CA status: {e}"),
        },
    }
}

/// Takes the cluster through a CA rotation, or resumes one that stopped part way: each step is
/// proposed only once every member has applied the one before. Returns the new fingerprint.
pub async fn rotate(
    consensus: &Consensus,
    runtime: &CaRuntime,
    on_step: impl Fn(&str),
) -> Result<String> {
    let current = || consensus.config_state().ca();
    let mut restage = false;
    let target = match current() {
        Some(s)
            if s.phase == CaPhase::Staged
                && !super::custody::staged_key_held(runtime, consensus, &s.cert).await =>
        {
            on_step(&format!(
                "rotation {} was staged by a CA holder that is gone: no reachable voter holds \
                 its key; staging a new CA in its place",
                s.epoch
            ));
            restage = true;
            s.epoch + 1
        }
        Some(s) if s.phase != CaPhase::Finished => {
            on_step(&format!("resuming rotation {} ({})", s.epoch, s.phase));
            s.epoch
        }
        Some(s) => s.epoch + 1,
        None => 1,
    };
    let mut first = true;
    loop {
        if std::mem::take(&mut restage) {
            // No member can apply the lost stage (no one signs under it): replace it first.
            first = false;
            let step = new_stage(consensus, runtime, target).await?;
            on_step("staging a new CA: every member trusts both");
            consensus.ca_step(step).await?;
            wait_for_local(consensus, (target, CaPhase::Staged), STEP_TIMEOUT).await?;
            continue;
        }
        // The first check fails fast: it is the one that finds a member already down.
        let timeout = if first {
            FIRST_CHECK_TIMEOUT
        } else {
            STEP_TIMEOUT
        };
        first = false;
        let state = wait_until_applied(consensus, runtime, timeout).await?;
        let step = match &state {
            Some(s) if s.epoch == target && s.phase == CaPhase::Finished => {
                on_step("every member trusts only the new CA");
                return Ok(hex_fingerprint(&s.cert));
            }
            Some(s) if s.phase == CaPhase::Staged => CaStep::Switch { epoch: s.epoch },
            Some(s) if s.phase == CaPhase::Switched => CaStep::Finish { epoch: s.epoch },
            _ => new_stage(consensus, runtime, target).await?,
        };
        on_step(match step.phase() {
            CaPhase::Staged => "staging a new CA: every member trusts both",
            CaPhase::Switched => "switching: every member presents a certificate of the new CA",
            CaPhase::Finished => "finishing: every member stops trusting the old CA",
        });
        let wanted = (step.epoch(), step.phase());
        let staging = step.phase() == CaPhase::Staged;
        let committed = consensus.ca_step(step).await;
        if staging
            && committed.is_ok()
            && std::env::var_os("APIARY_FAILPOINT").is_some_and(|f| f == "after-stage")
        {
            // The lost-driver test: gone with the only copy of the staged key.
            std::process::exit(86);
        }
        match committed {
            Ok(()) => wait_for_local(consensus, wanted, STEP_TIMEOUT).await?,
            // The step may have committed while its answer was lost (the leader closes its
            // connections when it finishes); the applied state tells.
            Err(error) => {
                if wait_for_local(consensus, wanted, Duration::from_secs(5))
                    .await
                    .is_err()
                {
                    return Err(error).context("the rotation step was not committed");
                }
            }
        }
    }
}

/// A new CA for rotation `epoch`, its key kept by this node (voters fetch it from here), and the
/// stage step that makes every member trust it besides the current one.
async fn new_stage(consensus: &Consensus, runtime: &CaRuntime, epoch: u64) -> Result<CaStep> {
    if !runtime.holds_key() && consensus.is_voter(consensus.id()) {
        // A voter that joined a moment ago fetches the key on its next round; the driver does
        // not wait for that round.
        let _ = super::custody::fetch_keys(runtime, consensus).await;
    }
    if !runtime.holds_key() {
        bail!(
            "this node does not hold the CA key: run the rotation through a voter's API \
             (`apiary status` shows the voters)"
        );
    }
    let ca = ClusterCa::generate(&format!("epoch {epoch}"))?;
    runtime.stage_new_ca(&ca)?;
    Ok(CaStep::Stage {
        epoch,
        previous_cert: runtime.ca_cert(),
        cert: ca.cert_der().to_vec(),
    })
}

/// Waits until this node's state machine has applied the step (it proposes through the
/// leader, which may be another node).
async fn wait_for_local(
    consensus: &Consensus,
    wanted: (u64, CaPhase),
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut updates = consensus.config_state().subscribe_ca();
    loop {
        if updates
            .borrow_and_update()
            .as_ref()
            .map(|s| (s.epoch, s.phase))
            == Some(wanted)
        {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, updates.changed()).await.is_err() {
            bail!("this node did not apply the committed rotation step within {timeout:?}");
        }
    }
}

/// Waits until every member has applied the step this node has applied, and returns it.
async fn wait_until_applied(
    consensus: &Consensus,
    runtime: &CaRuntime,
    timeout: Duration,
) -> Result<Option<CaState>> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = consensus.config_state().ca();
        let at = state.as_ref().map(|s| (s.epoch, s.phase));
        let members = member_states(consensus, runtime).await;
        let behind: Vec<&MemberCa> = members
            .iter()
            .filter(|m| m.error.is_some() || m.epoch.zip(m.phase) != at)
            .collect();
        if behind.is_empty() {
            return Ok(state);
        }
        if Instant::now() > deadline {
            let names: Vec<String> = behind
                .iter()
                .map(|m| match &m.error {
                    Some(e) => format!("{} (unreachable: {e})", m.name),
                    None => format!("{} (at {})", m.name, describe(m.epoch.zip(m.phase))),
                })
                .collect();
            bail!(
                "the rotation waits at {} for {}: every member must apply each step before the \
                 next. Start the member, or remove it for good (`apiary members remove NAME`), \
                 then run `apiary ca rotate` again to continue",
                describe(at),
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn describe(at: Applied) -> String {
    match at {
        None => "the original CA".into(),
        Some((epoch, phase)) => format!("rotation {epoch} {phase}"),
    }
}
