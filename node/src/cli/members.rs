//! `apiary members remove`: takes a member out of the cluster, by name or id.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::client::{print_json, text, Client, ClientArgs};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MembersCommand {
    /// Remove a member (by name or id) from the cluster: for a machine retired or lost for good.
    Remove { member: String },
}

pub async fn members(args: &ClientArgs, command: &MembersCommand) -> Result<()> {
    let client = Client::new(args)?;
    let MembersCommand::Remove { member } = command;
    let cluster = client.get("/v1/cluster").await?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let found: Vec<&Value> = members
        .iter()
        .filter(|m| {
            m["name"] == json!(member)
                || m["id"].as_u64().map(|id| id.to_string()).as_deref() == Some(member.as_str())
        })
        .collect();
    let target = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "no member is called {member:?}: `apiary status` lists the members ({})",
            members
                .iter()
                .map(|m| text(&m["name"]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("several members are called {member:?}: give the id (`apiary status` shows it)"),
    };
    let id = text(&target["id"]);
    let answer = client
        .send(reqwest::Method::DELETE, &format!("/v1/members/{id}"), None)
        .await?;
    if args.json {
        return print_json(&answer);
    }
    println!(
        "removed {} (id {id}); stop it and delete its data dir before reusing the machine",
        text(&target["name"])
    );
    Ok(())
}
