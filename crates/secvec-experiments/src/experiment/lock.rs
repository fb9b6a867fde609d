//! One trainer per stage-cache entry across processes: the shards of a sweep (`--shard I/N`) that
//! share a stage cache would otherwise all train the same missing alignment or vectors the first
//! time, each for as long as the stage takes, and keep one result.
//!
//! A lock is a file created with `create_new` (atomic on local file systems and on NFSv3+) beside
//! the entry, holding the owner's host and process id. While held, a thread refreshes its
//! modification time every [`HEARTBEAT`]; dropping the guard removes it. A waiter polls until the
//! entry is complete (then it loads it) or the lock is gone (then it takes it). A lock is stale,
//! and taken over, when its owner ran on this host and has exited (a killed process), or when its
//! heartbeat is older than [`STALE_AFTER`] (an owner on another host that died). Taking over a
//! stale lock is not atomic: two waiters can both do it and both train; the cache then keeps the
//! first complete entry (see `cache.rs`), so the cost is duplicated work, never a wrong result.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How often a held lock's modification time is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A lock whose heartbeat is this old belongs to a process that died (on any host).
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How often a waiter looks again.
const POLL: Duration = Duration::from_millis(500);

/// Who holds a lock: written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
}

impl Owner {
    fn me() -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
        }
    }

    /// Whether this owner is known to have exited: it ran on this host and its process is gone.
    /// Unknown (another host, or no `/proc`) counts as alive; the heartbeat decides then.
    fn exited(&self) -> bool {
        let proc = Path::new("/proc");
        self.host == hostname()
            && proc.join("self").exists()
            && !proc.join(self.pid.to_string()).exists()
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {}", self.pid, self.host)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A held lock; dropping it stops the heartbeat and removes the file.
#[derive(Debug)]
pub struct StageLock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for StageLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// This process holds the lock and is to do the work.
    Mine(StageLock),
    /// The work is done (`done()` became true), by another process or before.
    Done,
}

/// Creates the lock file, or `None` when it exists.
fn try_create(path: &Path) -> Result<Option<StageLock>> {
    let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("creating the lock {}", path.display())),
    };
    let owner = serde_json::to_vec(&Owner::me())?;
    file.write_all(&owner)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing the lock {}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (path, stop) = (path.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(HEARTBEAT);
                if let Ok(f) = File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
            }
        })
    };
    Ok(Some(StageLock {
        path: path.to_path_buf(),
        stop,
        heartbeat: Some(heartbeat),
    }))
}

/// The owner of the lock at `path` if it is stale (its owner exited or its heartbeat stopped);
/// `None` while it is live or when it vanished meanwhile.
fn stale_owner(path: &Path, now: SystemTime) -> Option<String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let owner: Option<Owner> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let age = now.duration_since(modified).unwrap_or_default();
    match owner {
        Some(o) if o.exited() => Some(format!("{o} has exited")),
        Some(o) if age > STALE_AFTER => Some(format!("{o} gave no sign of life for {age:?}")),
        // A lock file not (yet) holding an owner: its creator may be writing it right now.
        None if age > STALE_AFTER => Some(format!("an unreadable lock, {age:?} old")),
        _ => None,
    }
}

/// Waits until this process holds the lock at `lock` or `done()` is true, whichever comes
/// first; `done()` is checked first, and again once the lock is held (the previous holder may
/// have finished just before). `what` names the work in the message printed while waiting.
pub fn claim(lock: &Path, done: impl Fn() -> bool, what: &str) -> Result<Claim> {
    let mut announced = false;
    loop {
        if done() {
            return Ok(Claim::Done);
        }
        if let Some(guard) = try_create(lock)? {
            if done() {
                return Ok(Claim::Done);
            }
            return Ok(Claim::Mine(guard));
        }
        if let Some(why) = stale_owner(lock, SystemTime::now()) {
            eprintln!("  [{what}] taking over {}: {why}", lock.display());
            let _ = std::fs::remove_file(lock);
            continue;
        }
        if !announced {
            let owner = std::fs::read(lock)
                .ok()
                .and_then(|b| serde_json::from_slice::<Owner>(&b).ok())
                .map_or_else(|| "another process".to_string(), |o| o.to_string());
            eprintln!(
                "  [{what}] waiting for {owner}, which is training it ({})",
                lock.display()
            );
            announced = true;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("secvec-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_second_claimant_waits_for_the_holder_and_then_sees_the_work_done() {
        let dir = scratch("wait");
        let lock = dir.join(".x.lock");
        let done = dir.join("done");
        let Claim::Mine(guard) = claim(&lock, || done.exists(), "x").unwrap() else {
            panic!("the first claim must get the lock")
        };
        let owner: Owner = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert_eq!(owner, Owner::me());
        let polls = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (lock, done, polls) = (lock.clone(), done.clone(), polls.clone());
            std::thread::spawn(move || {
                let claimed = claim(
                    &lock,
                    || {
                        polls.fetch_add(1, Ordering::Relaxed);
                        done.exists()
                    },
                    "x",
                )
                .unwrap();
                matches!(claimed, Claim::Done)
            })
        };
        // The holder is alive and beating: the waiter keeps polling, never takes the lock.
        std::thread::sleep(Duration::from_millis(1600));
        assert!(!waiter.is_finished());
        assert!(polls.load(Ordering::Relaxed) >= 2);
        std::fs::write(&done, b"").unwrap();
        drop(guard);
        assert!(waiter.join().unwrap(), "the waiter must find the work done");
        assert!(!lock.exists(), "dropping the guard removes the lock");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_released_without_the_work_passes_to_the_waiter() {
        let dir = scratch("release");
        let lock = dir.join(".x.lock");
        let Claim::Mine(guard) = claim(&lock, || false, "x").unwrap() else {
            panic!("the first claim must get the lock")
        };
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                matches!(claim(&lock, || false, "x").unwrap(), Claim::Mine(_))
            })
        };
        std::thread::sleep(Duration::from_millis(700));
        drop(guard); // a holder that failed (an error) leaves the work to the next one
        assert!(waiter.join().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn locks_of_exited_or_silent_owners_are_taken_over() {
        let dir = scratch("stale");
        let lock = dir.join(".x.lock");
        let write =
            |owner: &Owner| std::fs::write(&lock, serde_json::to_vec(owner).unwrap()).unwrap();
        let now = SystemTime::now();
        // An owner on this host whose process is gone (pids never reach 2^31 - 2 on Linux).
        let dead = Owner {
            host: hostname(),
            pid: i32::MAX as u32 - 1,
        };
        write(&dead);
        if Path::new("/proc/self").exists() {
            assert!(stale_owner(&lock, now).unwrap().contains("has exited"));
            assert!(matches!(
                claim(&lock, || false, "x").unwrap(),
                Claim::Mine(_)
            ));
        }
        // An owner on another host: live while it beats, stale after STALE_AFTER of silence.
        let remote = Owner {
            host: "elsewhere".into(),
            pid: 1,
        };
        write(&remote);
        assert_eq!(stale_owner(&lock, SystemTime::now()), None);
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(1);
        assert!(
            stale_owner(&lock, later)
                .unwrap()
                .contains("no sign of life")
        );
        // This very process, alive: never stale while its heartbeat is fresh.
        write(&Owner::me());
        assert_eq!(stale_owner(&lock, SystemTime::now()), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
