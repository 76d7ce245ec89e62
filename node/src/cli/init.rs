//! `apiary init`: checks the machine, asks what a node needs (new cluster or join, name, data
//! dir, ports, probes, OTLP destination) and writes an `apiary.toml` that `apiary node --config`
//! reads. Every question has a flag; `--yes` takes the flags and defaults and asks nothing, so
//! provisioning tools can run it unattended.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use apiary_config::PROBE_NAMES;
use apiary_wire::JoinToken;
use inquire::{Confirm, MultiSelect, Select, Text};

use super::checks::{self, Check, Status};
use crate::agent::settings::FileSettings;

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Ask nothing: take the flags and the defaults (for scripts and provisioning).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Where to write the settings.
    #[arg(long, short = 'o', default_value = "apiary.toml")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Join the cluster of the member at this QUIC address (HOST:PORT) instead of creating one.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// The cluster's join token (DATA_DIR/join-token on any member).
    #[arg(long, env = "APIARY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Node name [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Data directory [default: ./apiary-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// QUIC address for peers [default: 127.0.0.1:7701]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address peers dial, when --listen is a wildcard such as 0.0.0.0:7701.
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP API and dashboard address [default: 127.0.0.1:7700]
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Probes to turn on in a new cluster, comma-separated [default: all: http,tls,tcp,process]
    #[arg(long, value_delimiter = ',')]
    pub probes: Option<Vec<String>>,
    /// OTLP destination of a new cluster (http://HOST:4318 for OTLP/HTTP, :4317 for gRPC), or
    /// `none`.
    #[arg(long, value_name = "URL|none")]
    pub destination: Option<String>,
    /// Run the node without eBPF probes (only the mesh and the OTLP receivers).
    #[arg(long)]
    pub no_probes: bool,
}

/// Everything the file will say, gathered from flags, defaults and answers.
struct Plan {
    join: Option<(String, String)>,
    name: String,
    data_dir: PathBuf,
    listen: SocketAddr,
    advertise: Option<String>,
    api: SocketAddr,
    probes: Vec<String>,
    destination: Option<String>,
    no_probes: bool,
}

pub fn run(args: InitArgs) -> Result<()> {
    check_flags(&args)?;
    let interactive = !args.yes;
    if interactive && !std::io::stdin().is_terminal() {
        bail!(
            "apiary init asks questions, but standard input is not a terminal: \
             pass --yes with the flags instead (apiary init --help lists them)"
        );
    }
    if args.output.exists() && !args.force {
        let replace = interactive
            && Confirm::new(&format!("{} exists. Replace it?", args.output.display()))
                .with_default(false)
                .prompt()?;
        if !replace {
            bail!(
                "{} exists: pass --force to replace it, or --output another file",
                args.output.display()
            );
        }
    }

    println!("Checking this machine for the eBPF probes…");
    let prerequisites = checks::probe_prerequisites();
    println!("{}", checks::render(&prerequisites));
    let kernel_blocks_probes = prerequisites
        .iter()
        .any(|c| c.status == Status::Fail && c.name != "privileges");
    let mut no_probes = args.no_probes;
    if kernel_blocks_probes && !no_probes {
        println!(
            "This kernel cannot run the probes (see FAIL above). The node can still join the mesh, \
             receive apps' OTLP and export it."
        );
        no_probes = !interactive
            || Confirm::new("Run this node without probes?")
                .with_default(true)
                .prompt()?;
    }

    let plan = ask(&args, no_probes, interactive)?;
    let text = render_file(&plan);
    // The file must read back as the node will read it.
    FileSettings::parse(&text).context("the generated settings do not parse (a bug)")?;
    write_file(&args.output, &text)?;

    let needs_root = !plan.no_probes && prerequisites[0].status != Status::Ok;
    let config = absolute(&args.output);
    println!("Wrote {}.", config.display());
    println!("Start the node with:\n");
    println!(
        "    {}apiary node --config {}\n",
        if needs_root { "sudo " } else { "" },
        config.display()
    );
    println!(
        "Then open http://{} for the dashboard, or run `apiary status --peer http://{}`.",
        plan.api, plan.api
    );
    Ok(())
}

fn ask(args: &InitArgs, no_probes: bool, interactive: bool) -> Result<Plan> {
    let mut join = match (&args.join, &args.join_token) {
        (Some(addr), Some(token)) => Some((addr.clone(), token.trim().to_string())),
        _ => None,
    };
    if interactive && join.is_none() {
        let choice = Select::new(
            "Create a new cluster or join one?",
            vec!["new cluster", "join a cluster"],
        )
        .prompt()?;
        if choice == "join a cluster" {
            let addr = Text::new("QUIC address of any member (HOST:PORT):")
                .with_validator(|s: &str| Ok(validation(host_port(s))))
                .prompt()?;
            let token = Text::new("Join token (DATA_DIR/join-token on that member):")
                .with_validator(|s: &str| {
                    Ok(validation(
                        s.trim()
                            .parse::<JoinToken>()
                            .map(drop)
                            .map_err(|e| e.to_string()),
                    ))
                })
                .prompt()?;
            join = Some((addr, token.trim().to_string()));
        }
    }

    let name = answer(
        interactive,
        "Node name:",
        args.name.clone(),
        crate::agent::args::default_name(),
        |s| {
            if s.is_empty() || s.len() > 64 {
                Err("1 to 64 characters".into())
            } else {
                Ok(s.to_string())
            }
        },
    )?;
    let data_dir: PathBuf = answer(
        interactive,
        "Data directory:",
        args.data_dir.as_ref().map(|p| p.display().to_string()),
        "./apiary-data".into(),
        |s| Ok(PathBuf::from(s)),
    )?;
    require(checks::data_dir_writable(&data_dir))?;
    if data_dir.join("node.json").exists() {
        println!(
            "{} already holds a node: it will restart as that node and ignore --join.",
            data_dir.display()
        );
    }
    let listen: SocketAddr = answer_port(
        interactive,
        "Peer (QUIC) address:",
        args.listen,
        "127.0.0.1:7701",
    )?;
    let advertise = match (&args.advertise, listen.ip().is_unspecified()) {
        (Some(a), _) => Some(a.clone()),
        (None, false) => None,
        (None, true) if interactive => Some(
            Text::new("Address peers should dial (HOST:PORT):")
                .with_validator(|s: &str| Ok(validation(host_port(s))))
                .prompt()?,
        ),
        (None, true) => {
            bail!("--listen {listen} is a wildcard: add --advertise HOST:PORT that peers can dial")
        }
    };
    let api: SocketAddr = answer_port(
        interactive,
        "HTTP API and dashboard address:",
        args.api,
        "127.0.0.1:7700",
    )?;
    require(checks::port_free("api port", api))?;

    let (probes, destination) = if join.is_some() {
        println!("Joining: the probes and destinations come from the cluster's replicated config (`apiary config get`).");
        (PROBE_NAMES.iter().map(|p| p.to_string()).collect(), None)
    } else {
        let probes = choose_probes(args, interactive, no_probes)?;
        let destination = choose_destination(args, interactive)?;
        (probes, destination)
    };
    Ok(Plan {
        join,
        name,
        data_dir,
        listen,
        advertise,
        api,
        probes,
        destination,
        no_probes,
    })
}

/// Flags that are wrong on their own fail before anything is checked, asked or created.
fn check_flags(args: &InitArgs) -> Result<()> {
    for probe in args.probes.iter().flatten() {
        if !PROBE_NAMES.contains(&probe.as_str()) {
            bail!(
                "--probes: `{probe}` is not a probe; probes are {}",
                PROBE_NAMES.join(", ")
            );
        }
    }
    match (&args.join, &args.join_token) {
        (Some(_), None) => {
            bail!("--join needs --join-token: copy DATA_DIR/join-token from any member")
        }
        (None, Some(_)) => {
            bail!("--join-token needs --join HOST:PORT (the QUIC address of any member)")
        }
        (Some(addr), Some(token)) => {
            host_port(addr).map_err(|e| anyhow::anyhow!("--join: {e}"))?;
            token.trim().parse::<JoinToken>().context(
                "--join-token is not a join token: copy DATA_DIR/join-token from any member",
            )?;
        }
        (None, None) => {}
    }
    if let Some(url) = args.destination.as_deref().filter(|d| *d != "none") {
        if url::Url::parse(url).is_err() {
            bail!("--destination {url:?} is not a URL: give e.g. http://collector:4318, or none");
        }
    }
    Ok(())
}

fn choose_probes(args: &InitArgs, interactive: bool, no_probes: bool) -> Result<Vec<String>> {
    if let Some(probes) = &args.probes {
        return Ok(probes.clone());
    }
    if !interactive || no_probes {
        return Ok(PROBE_NAMES.iter().map(|p| p.to_string()).collect());
    }
    let all: Vec<usize> = (0..PROBE_NAMES.len()).collect();
    let chosen = MultiSelect::new(
        "Probes to turn on (space toggles, enter accepts):",
        PROBE_NAMES.to_vec(),
    )
    .with_default(&all)
    .prompt()?;
    Ok(chosen.into_iter().map(str::to_string).collect())
}

fn choose_destination(args: &InitArgs, interactive: bool) -> Result<Option<String>> {
    let mut endpoint = match &args.destination {
        Some(d) if d == "none" => return Ok(None),
        Some(d) => Some(d.clone()),
        None if !interactive => return Ok(None),
        None => {
            let text = Text::new("OTLP destination (e.g. http://collector:4318; empty for none):")
                .prompt()?;
            (!text.trim().is_empty()).then(|| text.trim().to_string())
        }
    };
    while let Some(url) = endpoint.clone() {
        let check = checks::destination_answers(&url);
        println!("{}", checks::render(std::slice::from_ref(&check)));
        match check.status {
            Status::Ok => break,
            Status::Fail if !interactive => bail!("--destination {url:?}: {}", check.detail),
            Status::Warn if !interactive => break,
            _ => {
                let retry =
                    Text::new("Destination (edit it, or keep it and press enter; empty for none):")
                        .with_initial_value(&url)
                        .prompt()?;
                let retry = retry.trim().to_string();
                if retry == url && check.status == Status::Warn {
                    break;
                }
                endpoint = (!retry.is_empty()).then_some(retry);
            }
        }
    }
    Ok(endpoint)
}

/// A flag's value, else the answer to a question (interactive), else the default.
fn answer<T>(
    interactive: bool,
    question: &str,
    flag: Option<String>,
    default: String,
    parse: impl Fn(&str) -> Result<T, String> + Clone + 'static,
) -> Result<T> {
    let text = match flag {
        Some(value) => value,
        None if interactive => {
            let check = parse.clone();
            Text::new(question)
                .with_default(&default)
                .with_validator(move |s: &str| Ok(validation(check(s).map(drop))))
                .prompt()?
        }
        None => default,
    };
    parse(text.trim()).map_err(|e| anyhow::anyhow!("{question} {text:?}: {e}"))
}

fn answer_port(
    interactive: bool,
    question: &str,
    flag: Option<SocketAddr>,
    default: &str,
) -> Result<SocketAddr> {
    answer(
        interactive,
        question,
        flag.map(|a| a.to_string()),
        default.into(),
        |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| "give IP:PORT, e.g. 127.0.0.1:7700 or 0.0.0.0:7700".to_string())
        },
    )
}

fn validation(result: Result<(), String>) -> inquire::validator::Validation {
    match result {
        Ok(()) => inquire::validator::Validation::Valid,
        Err(message) => inquire::validator::Validation::Invalid(message.into()),
    }
}

fn host_port(text: &str) -> Result<(), String> {
    match text.trim().rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{text:?} is not HOST:PORT, e.g. 10.0.0.1:7701")),
    }
}

fn require(check: Check) -> Result<()> {
    if check.status == Status::Fail {
        bail!(
            "{}: {} ({})",
            check.name,
            check.detail,
            check.fix.unwrap_or_default()
        );
    }
    Ok(())
}

fn render_file(plan: &Plan) -> String {
    let mut node = toml::Table::new();
    let text = |s: &dyn std::fmt::Display| toml::Value::String(s.to_string());
    node.insert("name".into(), text(&plan.name));
    node.insert("data_dir".into(), text(&absolute(&plan.data_dir).display()));
    node.insert("listen".into(), text(&plan.listen));
    if let Some(advertise) = &plan.advertise {
        node.insert("advertise".into(), text(advertise));
    }
    node.insert("api".into(), text(&plan.api));
    if let Some((addr, token)) = &plan.join {
        node.insert("join".into(), text(addr));
        node.insert("join_token".into(), text(token));
    }
    if plan.no_probes {
        node.insert("no_probes".into(), toml::Value::Boolean(true));
    }
    let mut out = String::from(
        "# Apiary node settings, written by `apiary init`.\n\
         # Flags and APIARY_* variables override these; `apiary node --check` prints the result.\n",
    );
    out.push_str(&toml::to_string(&node).unwrap_or_default());
    if plan.join.is_none() {
        out.push_str(
            "\n# The new cluster's first config (ignored when joining or restarting).\n\
             # Change a running cluster with `apiary config set`.\n",
        );
        for probe in PROBE_NAMES {
            let on = plan.probes.iter().any(|p| p == probe);
            out.push_str(&format!("[cluster.probe.{probe}]\nenabled = {on}\n"));
        }
        if let Some(endpoint) = &plan.destination {
            let protocol = if endpoint.trim_end_matches('/').ends_with(":4317") {
                "grpc"
            } else {
                "http/protobuf"
            };
            out.push_str(&format!(
                "[cluster.destination.main]\nendpoint = {}\nprotocol = \"{protocol}\"\n",
                toml::Value::String(endpoint.clone())
            ));
        }
    }
    out
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // The file may hold a join token: readable by its owner only.
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
