#!/usr/bin/env python3
"""Kill -9 soak of the experiment runner (issue #15, item 2).

Runs a small sweep (the tiny Llama fixture, 4 runs, ndarray) once without interruption, then
again in a fresh folder while killing it with SIGKILL at random moments, resuming each time,
at least --kills times. After every kill it checks that

  * no result file is corrupt or partial: every .json parses, every .jsonl line parses, every
    .svg is closed, summary.csv has as many fields on each line as in its header;
  * no finished run was lost or changed: a run with metrics.json keeps it, byte for byte, with its
    generations and training logs.

Training stages save their state after every optimizer step (SECVEC_CHECKPOINT_EVERY=1), so a
kill inside a stage resumes it from its last step (mid-stage resume) and the comparison below
covers resumed stages too; the record counts the resumes the runner reported.

Every interrupted sweep is run to completion and compared with the uninterrupted one (a sweep that
completes before the kills are done starts over in a fresh folder): every evaluated metric,
every generated answer and every training loss must be equal (timings are not compared). Writes results/reliability/kill-soak.json.

    python3 scripts/kill-soak.py --bin target/release/secvec-experiments [--kills 20] [--seed 0]
"""

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

EXPERIMENT = """(
  model: "{model}",
  backend: ndarray,
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, epochs: 1, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: [Aligned, VectorsOn]),
  sweep: [
    (field: "security_vectors.samples", values: [0, 8], name: "sv"),
    (field: "finetune.lr", values: [1e-4, 1e-3], name: "attack_lr"),
  ],
)
"""


def run(binary, work, results, cache, timeout=None):
    """Starts the sweep; returns the process."""
    # Training stages save their state after every step, so that kills land mid-stage too and
    # the resumed stages are compared with uninterrupted ones.
    env = dict(os.environ, SECVEC_CACHE_DIR=cache, RUST_BACKTRACE="0",
               SECVEC_CHECKPOINT_EVERY="1")
    return subprocess.Popen(
        [binary, "run", os.path.join(work, "soak.ron"), "--results", results],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def corrupt_files(root):
    """Result files that are not whole (temporary files of atomic writes are not results)."""
    bad = []
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if not os.path.isfile(path) or ".tmp" in os.path.basename(path):
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
            if path.endswith(".json"):
                json.loads(data)
            elif path.endswith(".jsonl"):
                for line in data.decode().splitlines():
                    json.loads(line)
            elif path.endswith(".svg"):
                if not data.rstrip().endswith(b"</svg>"):
                    raise ValueError("unclosed svg")
            elif path.endswith(".csv"):
                lines = data.decode().splitlines()
                n = len(lines[0].split(","))
                if any(len(l.split(",")) != n for l in lines[1:]):
                    raise ValueError("ragged csv")
        except Exception as e:  # noqa: BLE001 - any failure to read is corruption
            bad.append(f"{path}: {e}")
    return bad


def finished_runs(root):
    """run name -> digest of its metrics.json, generations and training logs."""
    out = {}
    for metrics in glob.glob(os.path.join(root, "*", "runs", "*", "metrics.json")):
        run_dir = os.path.dirname(metrics)
        h = hashlib.sha256()
        for f in sorted(glob.glob(os.path.join(run_dir, "*"))):
            if os.path.isfile(f) and ".tmp" not in f:
                h.update(os.path.basename(f).encode())
                with open(f, "rb") as fh:
                    h.update(fh.read())
        out[os.path.basename(run_dir)] = h.hexdigest()
    return out


def comparable(root):
    """Everything a run measured, without timings: run -> (metrics, generations, losses)."""
    out = {}
    for metrics in sorted(glob.glob(os.path.join(root, "*", "runs", "*", "metrics.json"))):
        run_dir = os.path.dirname(metrics)
        with open(metrics) as f:
            m = json.load(f)
        stages = [(s["stage"], s.get("metrics")) for s in m["stages"]]
        losses = [(t["stage"], t.get("first_loss"), t.get("final_loss"), t.get("examples"))
                  for t in m["training"]]
        gens = {}
        for g in sorted(glob.glob(os.path.join(run_dir, "generations-*.jsonl"))):
            with open(g) as f:
                gens[os.path.basename(g)] = f.read()
        out[os.path.basename(run_dir)] = (stages, losses, gens)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the secvec-experiments binary")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                     "fixtures", "tiny-llama-bf16"))
    ap.add_argument("--out", default="results/reliability/kill-soak.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="secvec-kill-soak-")
    with open(os.path.join(work, "soak.ron"), "w") as f:
        f.write(EXPERIMENT.format(model=os.path.abspath(args.model)))

    start = time.time()
    p = run(args.bin, work, os.path.join(work, "reference"), os.path.join(work, "cache-ref"))
    _, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"the uninterrupted run failed:\n{err.decode()}")
    reference_seconds = time.time() - start
    print(f"uninterrupted sweep: {reference_seconds:.1f} s")

    results = os.path.join(work, "soak")
    cache = os.path.join(work, "cache-soak")
    kills = 0
    restarts = 0
    lost = set()
    corrupt = set()
    seen = {}
    finished_before_end = 0
    mid_stage_resumes = 0
    sweeps_compared = 0
    differences = []
    want = comparable(os.path.join(work, "reference"))
    while True:
        p = run(args.bin, work, results, cache)
        restarts += 1
        delay = rng.uniform(0.05, reference_seconds * 0.5)
        try:
            p.wait(timeout=delay)
            done = True
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            done = False
        log = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if done and p.returncode != 0:
            sys.exit(f"a resumed run failed:\n{log}")
        mid_stage_resumes += log.count("resuming at step")
        corrupt.update(corrupt_files(results))
        now = finished_runs(results)
        for name, digest in seen.items():
            if now.get(name) != digest:
                lost.add(name)
        seen.update(now)
        print(f"start {restarts}: {'finished' if done else f'killed after {delay:.2f} s'}; "
              f"{len(now)} runs finished, {len(lost)} lost, {len(corrupt)} corrupt files")
        if done:
            # Every completed sweep is compared with the uninterrupted one.
            got = comparable(results)
            sweeps_compared += 1
            for name in sorted(set(got) | set(want)):
                for part, a, b in zip(("metrics", "losses", "generations"),
                                      got.get(name, (None,) * 3), want.get(name, (None,) * 3)):
                    if a != b:
                        differences.append(f"sweep {sweeps_compared}, {name}: {part}")
                        print(f"differs from the uninterrupted sweep: {differences[-1]}")
            if kills >= args.kills:
                break
            # Finished before enough kills: start over in a fresh folder, keeping the count.
            finished_before_end += 1
            shutil.rmtree(results)
            shutil.rmtree(cache, ignore_errors=True)
            seen = {}
    equal = not differences
    temp_left = [f for f in glob.glob(os.path.join(results, "**", "*.tmp*"), recursive=True)]
    record = {
        "kill_soak": {
            "kills": kills,
            "finished_lost": len(lost),
            "corrupt_files": len(corrupt),
            "final_equal_to_uninterrupted": equal,
            "temporary_files_left": len(temp_left),
            "starts": restarts,
            "mid_stage_resumes": mid_stage_resumes,
            "sweeps_completed_and_compared": sweeps_compared,
            "runs": 4,
            "seconds": round(time.time() - start, 1),
        },
        "command": " ".join(sys.argv),
        "git_revision": subprocess.run(["git", "rev-parse", "--short=12", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
        "differences": differences,
        "lost": sorted(lost),
        "corrupt": sorted(corrupt),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(json.dumps(record["kill_soak"]))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)
    if lost or corrupt or not equal:
        sys.exit("the soak found lost or corrupt results")


if __name__ == "__main__":
    main()
