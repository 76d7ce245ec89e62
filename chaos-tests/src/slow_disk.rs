//! A slow disk under one node's data dir: `slowfs.py` (a FUSE pass-through, fusepy on libfuse2)
//! mounted over it, whose writes and syncs wait as long as its control file says. This kernel
//! has no device mapper (no dm-delay), so the slowness is put in the filesystem the node writes
//! through: its sled writes and fsyncs are real syscalls that take that long to return.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::hosts::run;

pub struct SlowDisk {
    pub at: PathBuf,
    control: PathBuf,
    server: Child,
}

/// A Python that can import fusepy: $APIARY_CHAOS_FUSE_PYTHON, else the workspace's
/// target/otel-venv (where `.ci/run` installs it), else the system's.
fn fuse_python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/otel-venv/bin/python");
    let candidates = std::env::var_os("APIARY_CHAOS_FUSE_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")]);
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import fuse"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn mounted(at: &Path) -> bool {
    let at = at.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(&at))
    })
}

impl SlowDisk {
    /// Mounts the slow filesystem over `at` (backed by a sibling directory). Fails with what is
    /// missing when fusepy, libfuse2 or /dev/fuse is not there.
    pub fn mount(at: &Path) -> Result<SlowDisk> {
        let python = fuse_python().context(
            "no Python with fusepy (pip install fusepy into target/otel-venv; Debian libfuse2)",
        )?;
        if !Path::new("/dev/fuse").exists() {
            bail!("no /dev/fuse on this machine");
        }
        let backing = at.with_extension("backing");
        let control = at.with_extension("delay-ms");
        std::fs::create_dir_all(at).context("creating the data dir")?;
        std::fs::create_dir_all(&backing).context("creating the backing dir")?;
        std::fs::write(&control, "0").context("writing the delay file")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("slowfs.py");
        let log = std::fs::File::create(at.with_extension("slowfs.log"))?;
        let server = Command::new(&python)
            .arg(&script)
            .args([&backing, &at.to_path_buf(), &control])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let mut disk = SlowDisk {
            at: at.into(),
            control,
            server,
        };
        let start = Instant::now();
        while !mounted(at) {
            if let Ok(Some(status)) = disk.server.try_wait() {
                bail!(
                    "slowfs.py ended ({status}) before mounting: see {}",
                    at.with_extension("slowfs.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("slowfs.py did not mount {} within 10 s", at.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(disk)
    }

    /// Every write and sync from now on waits `millis` (0: full speed).
    pub fn set_delay(&self, millis: u64) -> Result<()> {
        std::fs::write(&self.control, millis.to_string()).context("writing the delay file")
    }

    pub fn slow(&self) -> bool {
        std::fs::read_to_string(&self.control).is_ok_and(|ms| ms.trim() != "0")
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = self.set_delay(0);
        let _ = run("umount", &["-l", &self.at.to_string_lossy()]);
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
