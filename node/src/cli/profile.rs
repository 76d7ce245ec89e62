//! `apiary profile …`: shareable signed configuration profiles. `list`, `diff`, `apply` and
//! `export` ask a node; `show`, `sign`, `verify`, `keygen` and `import` work on files here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use apiary_api_types::{ConfigView, ProfileApplied, ProfileApplyRequest, ProfilesView};
use apiary_config::{ClusterConfig, Signer, Trust};
use apiary_profile::{catalogue, signature, Metadata, Profile};

use super::client::{default_author, parse, print_json, table, text, Client, ClientArgs};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProfileCommand {
    /// The catalogue built into the node, judged against its running config, and the
    /// time-limited profiles still active.
    List,
    /// A profile's metadata and settings (a catalogue name or a file; no node needed).
    Show { profile: String },
    /// What applying the profile would change on the running config (a dry run on the node).
    Diff {
        profile: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Apply the profile to the whole cluster as one config event (`config revert` undoes it).
    Apply {
        profile: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Apply for this long (e.g. 15m), then it ends by itself; overrides its time_limit.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why (kept in the history).
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
        /// Who [default: $USER]
        #[arg(long)]
        author: Option<String>,
    },
    /// Write the running config's differences from the defaults as a profile to share.
    Export {
        #[arg(long, default_value = "exported")]
        name: String,
        #[arg(long = "profile-version", default_value = "1")]
        version: String,
        #[arg(long, default_value = "Exported from a running cluster")]
        summary: String,
        /// [default: $USER]
        #[arg(long)]
        author: Option<String>,
        #[arg(long, default_value = "any")]
        stack: String,
        /// Write here instead of to standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Sign a profile file with a minisign secret key: writes FILE.minisig.
    Sign {
        file: PathBuf,
        /// The secret key file (from `apiary profile keygen` or `minisign -G`); an encrypted
        /// one takes its password from APIARY_SIGNING_PASSWORD.
        #[arg(long)]
        key: PathBuf,
        /// Signed with the profile and shown by `verify` and the history.
        #[arg(long = "trusted-comment")]
        trusted_comment: Option<String>,
    },
    /// Check a profile here: its form, its settings against this Apiary's config model, and its
    /// signature against the given public keys (default: the built-in trusted set).
    Verify {
        profile: String,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Make a minisign key pair for signing profiles: PREFIX.key (keep it secret) and PREFIX.pub.
    Keygen {
        #[arg(long, default_value = "apiary-profile")]
        out: PathBuf,
    },
    /// Write a static HTML index of profiles (the built-in catalogue, or --from DIR) with their
    /// files and signatures into DIR, for any web server to share.
    Site {
        dir: PathBuf,
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Verify a profile (a file, or an http:// or https:// URL such as a `profile site`'s, whose
    /// signature is fetched from URL.minisig) and copy it with its signature into a local
    /// catalogue directory.
    Import {
        file: String,
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long, default_value = "profiles")]
        into: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// The signature of a profile file [default: FILE.minisig, if it exists].
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Apply even without a signature by a trusted key (recorded as unverified).
    #[arg(long)]
    allow_unsigned: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// The signature [default: FILE.minisig].
    #[arg(long)]
    signature: Option<PathBuf>,
    /// A trusted public key: a minisign.pub file or its base64 line (repeatable).
    #[arg(long = "key")]
    keys: Vec<String>,
}

/// A profile to read: a file here, or a catalogue profile by name.
struct Source {
    text: String,
    signature: Option<String>,
    /// `Some(name)` for a catalogue profile.
    catalogue: Option<&'static str>,
}

fn read_source(given: &str, signature: Option<&Path>) -> Result<Source> {
    let path = Path::new(given);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the profile {}", path.display()))?;
        let default_signature = PathBuf::from(format!("{}.minisig", path.display()));
        let signature = match signature {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the signature {}", file.display()))?,
            ),
            None => std::fs::read_to_string(default_signature).ok(),
        };
        return Ok(Source {
            text,
            signature,
            catalogue: None,
        });
    }
    match catalogue::find(given) {
        Some(entry) => Ok(Source {
            text: entry.text.to_string(),
            signature: Some(entry.signature.to_string()),
            catalogue: Some(entry.name),
        }),
        None => {
            let names: Vec<&str> = catalogue::CATALOGUE.iter().map(|e| e.name).collect();
            bail!(
                "`{given}` is neither a file nor a catalogue profile; the catalogue has {}",
                names.join(", ")
            )
        }
    }
}

pub async fn run(args: &ClientArgs, command: &ProfileCommand) -> Result<()> {
    match command {
        ProfileCommand::List => list(args).await,
        ProfileCommand::Show { profile } => show(profile),
        ProfileCommand::Diff { profile, source } => {
            apply(args, profile, source, true, None, "", &None).await
        }
        ProfileCommand::Apply {
            profile,
            source,
            duration,
            comment,
            author,
        } => {
            apply(
                args,
                profile,
                source,
                false,
                duration.clone(),
                comment,
                author,
            )
            .await
        }
        ProfileCommand::Export {
            name,
            version,
            summary,
            author,
            stack,
            output,
        } => {
            let metadata = Metadata {
                name: name.clone(),
                version: version.clone(),
                summary: summary.clone(),
                author: author.clone().unwrap_or_else(default_author),
                stack: stack.clone(),
                min_apiary_version: env!("CARGO_PKG_VERSION").into(),
                time_limit: None,
            };
            export(args, &metadata, output.as_deref()).await
        }
        ProfileCommand::Sign {
            file,
            key,
            trusted_comment,
        } => sign(file, key, trusted_comment.as_deref()),
        ProfileCommand::Verify { profile, keys } => {
            let source = read_source(profile, keys.signature.as_deref())?;
            verify(&source, &keys.keys).map(|_| ())
        }
        ProfileCommand::Keygen { out } => keygen(out),
        ProfileCommand::Site { dir, from } => super::profile_site::write_site(dir, from.as_deref()),
        ProfileCommand::Import { file, keys, into } => import(file, keys, into).await,
    }
}

async fn list(args: &ClientArgs) -> Result<()> {
    let client = Client::new(args)?;
    let answer = client.get("/v1/profiles").await?;
    if args.json {
        return print_json(&answer);
    }
    let view: ProfilesView = parse(&answer, "GET /v1/profiles")?;
    let mut rows = table(&["NAME", "VERSION", "STACK", "SIGNED", "CHANGES", "SUMMARY"]);
    for profile in &view.catalogue {
        let signed = match &profile.signer {
            Some(Signer::Trusted { key_id, .. }) => format!("trusted {key_id}"),
            _ => "NO".into(),
        };
        let changes = match profile.problems.first() {
            Some(problem) => format!("cannot apply: {problem}"),
            None => format!("{} keys", profile.diff.len()),
        };
        let metadata = &profile.metadata;
        rows.add_row(vec![
            metadata.name.clone(),
            metadata.version.clone(),
            metadata.stack.clone(),
            signed,
            changes,
            metadata.summary.clone(),
        ]);
    }
    println!("{rows}");
    for active in &view.active {
        println!(
            "active: {} v{} (config version {}) ends at {}",
            active.name,
            active.profile_version,
            active.version,
            unix_time(active.expires_at_unix)
        );
    }
    Ok(())
}

fn show(given: &str) -> Result<()> {
    let source = read_source(given, None)?;
    let profile = Profile::parse(&source.text).map_err(anyhow::Error::msg)?;
    let m = &profile.metadata;
    println!("{} v{}: {}", m.name, m.version, m.summary);
    println!(
        "author: {}   stack: {}   needs apiary {}",
        m.author, m.stack, m.min_apiary_version
    );
    if let Some(limit) = &m.time_limit {
        println!("time limit: {limit} (then it ends by itself)");
    }
    let mut rows = table(&["KEY", "VALUE"]);
    for placed in &profile.settings {
        rows.add_row(vec![
            placed.setting.key.clone(),
            placed.setting.value.to_string(),
        ]);
    }
    println!("{rows}");
    Ok(())
}

async fn apply(
    args: &ClientArgs,
    given: &str,
    source_args: &SourceArgs,
    dry_run: bool,
    duration: Option<String>,
    comment: &str,
    author: &Option<String>,
) -> Result<()> {
    let source = read_source(given, source_args.signature.as_deref())?;
    let (name, profile, signature) = match source.catalogue {
        // The node applies its own built-in copy: the same bytes, already signed.
        Some(name) => (Some(name.to_string()), None, None),
        None => (None, Some(source.text), source.signature),
    };
    let body = ProfileApplyRequest {
        name,
        profile,
        signature,
        dry_run,
        allow_unsigned: source_args.allow_unsigned,
        duration,
        comment: comment.to_string(),
        author: Some(author.clone().unwrap_or_else(default_author)),
    };
    let client = Client::new(args)?;
    let answer = client
        .send(
            reqwest::Method::POST,
            "/v1/profiles/apply",
            Some(serde_json::to_value(body)?),
        )
        .await?;
    if args.json {
        return print_json(&answer);
    }
    let applied: ProfileApplied = parse(&answer, "POST /v1/profiles/apply")?;
    let mut rows = table(&["KEY", "FROM", "TO"]);
    for change in &applied.diff {
        let shown = |v: &Option<serde_json::Value>| v.as_ref().map(text).unwrap_or("-".into());
        rows.add_row(vec![
            change.key.clone(),
            shown(&change.from),
            shown(&change.to),
        ]);
    }
    println!(
        "profile {} v{}: {}",
        applied.name, applied.version, applied.signer
    );
    println!("{rows}");
    match &applied.committed {
        None => println!(
            "dry run: nothing committed ({} keys would change)",
            applied.diff.len()
        ),
        Some(committed) => {
            println!(
                "committed: config version {} (undo: apiary config revert {})",
                committed.version,
                committed.version.saturating_sub(1)
            );
            if let Some(at) = applied.expires_at_unix {
                println!("ends by itself at {}", unix_time(at));
            }
        }
    }
    Ok(())
}

async fn export(args: &ClientArgs, metadata: &Metadata, output: Option<&Path>) -> Result<()> {
    let client = Client::new(args)?;
    let view: ConfigView = parse(&client.get("/v1/config").await?, "GET /v1/config")?;
    let (text, skipped) =
        apiary_profile::export::export(metadata, &ClusterConfig::default(), &view.config);
    for key in &skipped {
        eprintln!("left out `{key}`: a profile may not set it");
    }
    match output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {}: review it, then `apiary profile sign`",
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn sign(file: &Path, key: &Path, trusted_comment: Option<&str>) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = std::str::from_utf8(&bytes).context("the profile is not UTF-8 text")?;
    // Refuse to sign what no node would apply.
    let profile = Profile::parse(text).map_err(anyhow::Error::msg)?;
    profile
        .validate(&ClusterConfig::default())
        .map_err(anyhow::Error::msg)?;
    let secret = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the secret key {}", key.display()))?;
    let comment = trusted_comment.map(str::to_string).unwrap_or_else(|| {
        let m = &profile.metadata;
        format!("{} v{} by {}", m.name, m.version, m.author)
    });
    let password = std::env::var("APIARY_SIGNING_PASSWORD").ok();
    let signed = signature::sign(&bytes, &secret, password, &comment)?;
    let out = PathBuf::from(format!("{}.minisig", file.display()));
    std::fs::write(&out, signed).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Checks form, model and signature here; returns the profile's name.
fn verify(source: &Source, keys: &[String]) -> Result<String> {
    let trusted = if keys.is_empty() {
        Trust::default().profile_keys
    } else {
        keys.iter()
            .map(|k| read_public_key(k))
            .collect::<Result<_>>()?
    };
    let base = ClusterConfig {
        trust: Trust {
            profile_keys: trusted,
        },
        ..ClusterConfig::default()
    };
    let checked = apiary_profile::check(
        &source.text,
        source.signature.as_deref(),
        &base,
        false,
        env!("CARGO_PKG_VERSION"),
    )
    .map_err(anyhow::Error::msg)?;
    let m = &checked.profile.metadata;
    println!(
        "ok: {} v{} {}; {} settings valid against this apiary's config model",
        m.name,
        m.version,
        checked.signer,
        checked.profile.settings.len()
    );
    Ok(m.name.clone())
}

fn read_public_key(given: &str) -> Result<String> {
    let text = match std::fs::read_to_string(given) {
        Ok(text) => text,
        Err(_) => given.to_string(),
    };
    signature::public_key_line(&text).with_context(|| {
        format!("--key {given}: neither a minisign.pub file nor its base64 line (RW…)")
    })
}

fn keygen(out: &Path) -> Result<()> {
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    if secret_path.exists() {
        bail!(
            "{} exists: keygen does not overwrite a key",
            secret_path.display()
        );
    }
    let (public, secret) = signature::generate_key("apiary profile signing key")?;
    write_secret(&secret_path, &secret)?;
    std::fs::write(&public_path, &public)
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!(
        "wrote {} (secret: keep it offline) and {}",
        secret_path.display(),
        public_path.display()
    );
    if let Some(line) = signature::public_key_line(&public) {
        let mut keys = Trust::default().profile_keys;
        keys.push(line);
        println!(
            "to trust it besides the project's key (admin token): apiary config set \
             'trust.profile_keys={}'",
            serde_json::to_string(&keys)?
        );
    }
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The most a fetched profile or signature may be: profiles are a page of settings.
const MAX_FETCHED_BYTES: usize = 1 << 20;

/// GETs `url` as text; `Ok(None)` for a 404 (a profile published without a signature).
async fn fetch_text(url: &str) -> Result<Option<String>> {
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let body = response
        .bytes()
        .await
        .with_context(|| format!("cannot read {url}"))?;
    if body.len() > MAX_FETCHED_BYTES {
        bail!(
            "{url} is {} bytes: a profile is at most {MAX_FETCHED_BYTES}",
            body.len()
        );
    }
    String::from_utf8(body.to_vec())
        .map(Some)
        .with_context(|| format!("{url} is not UTF-8 text"))
}

async fn import(given: &str, keys: &KeyArgs, into: &Path) -> Result<()> {
    let source = if given.starts_with("http://") || given.starts_with("https://") {
        let text = fetch_text(given)
            .await?
            .with_context(|| format!("{given} answered 404: no profile there"))?;
        let signature = match keys.signature.as_deref() {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the signature {}", file.display()))?,
            ),
            None => fetch_text(&format!("{given}.minisig")).await?,
        };
        Source {
            text,
            signature,
            catalogue: None,
        }
    } else if Path::new(given).is_file() {
        read_source(given, keys.signature.as_deref())?
    } else {
        bail!("{given} is neither a file nor an http:// or https:// URL");
    };
    let name = verify(&source, &keys.keys)?;
    std::fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let target = into.join(format!("{name}.toml"));
    std::fs::write(&target, &source.text)?;
    if let Some(signature) = &source.signature {
        std::fs::write(into.join(format!("{name}.toml.minisig")), signature)?;
    }
    println!("imported as {}", target.display());
    Ok(())
}

fn unix_time(seconds: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(at).to_string()
}
